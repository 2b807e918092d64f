package installer

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// Check IDs.
const (
	CheckHostRole         = "host.role"
	CheckHostMulticluster = "host.multicluster"
	CheckHostInstaller    = "host.installer"
	CheckHostTower        = "host.tower"
	CheckHostService      = "host.towerService"
	CheckHostAddress      = "host.proxyPublishAddress"
	CheckHostRestart      = "host.apiserverRestart"
	CheckHostHealth       = "host.proxyHealth"
	CheckHostClusters     = "host.clusters"

	CheckClusterConditions  = "cluster.conditions"
	CheckClusterTunnel      = "cluster.tunnel"
	CheckClusterCertificate = "cluster.certificate"
	CheckClusterTerminating = "cluster.terminating"
	CheckClusterPort        = "cluster.port"
	CheckClusterVersion     = "cluster.versionSkew"
	CheckClusterMember      = "cluster.memberContext"
	CheckClusterProtocol    = "cluster.agentProtocol"

	CheckMemberMatch     = "member.match"
	CheckMemberRole      = "member.role"
	CheckMemberConfig    = "member.config"
	CheckMemberJWT       = "member.jwtSecret"
	CheckMemberTokenAge  = "member.accessTokenMaxAge"
	CheckMemberClock     = "member.clockSkew"
	CheckMemberUID       = "member.uid"
	CheckMemberAgent     = "member.agent"
	CheckMemberAgentPods = "member.agentPods"
)

// Evidence sources of the tunnel check.
const (
	SourceHeartbeat    = "proxy heartbeat Lease"
	SourceMemberAgent  = "member agent pods"
	SourceServiceProxy = "host apiserver service proxy"
	SourceConditions   = "Cluster conditions"
)

// certWarnBefore: a client certificate expiring sooner is a warning.
const certWarnBefore = 7 * 24 * time.Hour

type checker struct {
	h       *hostData
	members []*memberData
	now     time.Time
	out     []Finding
	// byCluster: the member context matched to each Cluster.
	byCluster map[string]*memberData
	hostFlag  []string
}

func (k *checker) add(f Finding) { k.out = append(k.out, f) }

func runChecks(h *hostData, members []*memberData, now time.Time) []Finding {
	k := &checker{h: h, members: members, now: now, byCluster: map[string]*memberData{}}
	if h.c.Context != "" {
		k.hostFlag = []string{"--host-context", h.c.Context}
	}
	for _, m := range members {
		if m.cluster != "" && k.byCluster[m.cluster] == nil {
			k.byCluster[m.cluster] = m
		}
	}
	k.hostChecks()
	for i := range h.clusters {
		k.clusterChecks(&h.clusters[i])
	}
	for _, m := range members {
		k.memberChecks(m)
	}
	sortFindings(k.out)
	return k.out
}

func hostCtxArgs(c *Clients) []string {
	if c == nil || c.Context == "" {
		return nil
	}
	return []string{"--context", c.Context}
}

func (k *checker) joinFix(m *memberData, action string) *Fix {
	args := append([]string{"join"}, hostCtxArgs(m.c)...)
	args = append(args, k.hostFlag...)
	if m.cluster != "" && m.cluster != manifests.SanitizeClusterName(m.c.Context) {
		args = append(args, "--name", m.cluster)
	}
	return &Fix{Action: action, KsMc: args}
}

// hostChecks: role and multicluster, installer, Clusters, the proxy (Deployment, Service,
// published address), ks-apiserver's restart and /health.
func (k *checker) hostChecks() {
	k.hostRoleChecks()
	k.hostInstallerCheck()
	k.hostTowerCheck()
	ports := k.hostServiceCheck()
	k.hostAddressCheck(ports)
	k.hostRestartCheck()
	k.hostHealthCheck()
}

// initHostArgs is "init-host" with the host's context.
func (k *checker) initHostArgs() []string {
	return append([]string{"init-host"}, hostCtxArgs(k.h.c)...)
}

func (k *checker) hostRoleChecks() {
	h, initHost := k.h, k.initHostArgs()
	const subj = "host"
	switch {
	case h.ccErr != nil:
		k.add(Finding{ID: CheckHostRole, Status: DiagFail, Subject: subj, Summary: "cannot read the host's ClusterConfiguration",
			Evidence: []string{errText(h.ccErr)}, Fix: &Fix{Action: "check that KubeSphere is installed and the context has access", Kubectl: append([]string{"-n", kubesphere.Namespace, "get", "clusterconfiguration", kubesphere.ClusterConfigurationName}, hostCtxArgs(h.c)...)}})
	case h.cc.ClusterRole() != kubesphere.RoleHost:
		k.add(Finding{ID: CheckHostRole, Status: DiagFail, Subject: subj, Summary: "the cluster is not a host",
			Evidence: []string{"spec.multicluster.clusterRole is " + strconv.Quote(h.cc.ClusterRole())},
			Fix:      &Fix{Action: "make it the host", Setting: ccObject + " spec.multicluster.clusterRole: host", KsMc: initHost}})
	default:
		k.add(Finding{ID: CheckHostRole, Status: DiagOK, Subject: subj, Summary: "clusterRole host"})
	}
	if h.cc != nil {
		if s := h.cc.ComponentStatus("multicluster"); s == "enabled" {
			k.add(Finding{ID: CheckHostMulticluster, Status: DiagOK, Subject: subj, Summary: "multicluster enabled (status.multicluster.status)"})
		} else {
			if s == "" {
				s = "unset"
			}
			k.add(Finding{ID: CheckHostMulticluster, Status: DiagFail, Subject: subj, Summary: "multicluster is not enabled yet",
				Evidence: []string{"status.multicluster.status is " + s},
				Fix:      &Fix{Action: "wait for ks-installer or re-run init-host, which waits and reports installer failures", KsMc: initHost}})
		}
	}
}

func (k *checker) hostInstallerCheck() {
	h := k.h
	const subj = "host"
	switch {
	case h.installer.Phase == InstallerFailed:
		ev := []string{h.installer.Describe()}
		if h.installer.FailureLine != "" {
			ev = append(ev, "installer: "+h.installer.FailureLine)
		}
		k.add(Finding{ID: CheckHostInstaller, Status: DiagFail, Subject: subj, Summary: "ks-installer's last run failed", Evidence: ev,
			Fix: &Fix{Action: "read the installer's logs, fix the failed task, then re-run init-host", Kubectl: strings.Fields(strings.TrimPrefix(InstallerLogsCommand(h.c.Context), "kubectl "))}})
	case h.cfg != nil && h.cc != nil && len(ConfigDrift(h.cc, h.cfg)) > 0:
		k.add(Finding{ID: CheckHostInstaller, Status: DiagWarn, Subject: subj, Summary: "kubesphere-config does not reflect the ClusterConfiguration yet (installer running?)",
			Evidence: ConfigDrift(h.cc, h.cfg), Fix: &Fix{Action: "wait for ks-installer to finish", Kubectl: strings.Fields(strings.TrimPrefix(InstallerLogsCommand(h.c.Context), "kubectl "))}})
	default:
		k.add(Finding{ID: CheckHostInstaller, Status: DiagOK, Subject: subj, Summary: h.installer.Describe()})
	}
	if h.clustersErr != nil {
		k.add(Finding{ID: CheckHostClusters, Status: DiagFail, Subject: subj, Summary: "cannot list the host's Clusters: the per-cluster checks did not run",
			Evidence: []string{errText(h.clustersErr)}, Fix: &Fix{Action: "check that the context may list clusters.cluster.kubesphere.io",
				Kubectl: append([]string{"auth", "can-i", "list", "clusters.cluster.kubesphere.io"}, hostCtxArgs(h.c)...)}})
	}
}

func (k *checker) hostTowerCheck() {
	h, initHost := k.h, k.initHostArgs()
	const subj = "host"
	tunnelKind := TunnelOf(h.tower)
	switch {
	case h.towerErr != nil:
		k.add(Finding{ID: CheckHostTower, Status: DiagFail, Subject: subj, Summary: "cannot read Deployment kubesphere-system/tower", Evidence: []string{errText(h.towerErr)}})
	case h.tower == nil:
		k.add(Finding{ID: CheckHostTower, Status: DiagFail, Subject: subj, Summary: "no tower Deployment: nothing accepts agents",
			Fix: &Fix{Action: "install the proxy (the bundled ks-mc proxy, or re-enable multicluster)", KsMc: append(append([]string{}, initHost...), "--tunnel=ks-mc")}})
	default:
		ok, why := DeploymentRolledOut(h.tower)
		if ok && h.tower.Status.ReadyReplicas > 0 {
			k.add(Finding{ID: CheckHostTower, Status: DiagOK, Subject: subj, Summary: fmt.Sprintf("tower Deployment ready (%s, %d/%d)", tunnelKind, h.tower.Status.ReadyReplicas, replicas(h.tower))})
		} else {
			if why == "" {
				why = fmt.Sprintf("%d/%d ready", h.tower.Status.ReadyReplicas, replicas(h.tower))
			}
			k.add(Finding{ID: CheckHostTower, Status: DiagFail, Subject: subj, Summary: "tower Deployment not ready (" + string(tunnelKind) + ")", Evidence: []string{why},
				Fix: &Fix{Action: "look at the proxy's pods and logs", Kubectl: append([]string{"-n", kubesphere.Namespace, "logs", "deployment/tower"}, hostCtxArgs(h.c)...)}})
		}
	}
}

// hostServiceCheck checks Service tower and returns its ports (port, nodePort, targetPort).
func (k *checker) hostServiceCheck() []int32 {
	h, initHost, addr := k.h, k.initHostArgs(), k.h.healthAddr
	const subj = "host"
	var ports []int32
	switch {
	case h.svcErr != nil:
		k.add(Finding{ID: CheckHostService, Status: DiagFail, Subject: subj, Summary: "cannot read Service kubesphere-system/tower", Evidence: []string{errText(h.svcErr)}})
	case h.svc == nil:
		k.add(Finding{ID: CheckHostService, Status: DiagFail, Subject: subj, Summary: "no tower Service: agents cannot reach the proxy"})
	default:
		for _, p := range h.svc.Spec.Ports {
			ports = append(ports, p.Port)
			if p.NodePort != 0 {
				ports = append(ports, p.NodePort)
			}
			if p.TargetPort.IntValue() != 0 {
				ports = append(ports, int32(p.TargetPort.IntValue()))
			}
		}
		var ev []string
		for _, c := range ComputeCandidates(h.svc, h.nodes) {
			ev = append(ev, "candidate "+c.Address+" ("+c.Source+")")
		}
		switch {
		case LoadBalancerAddress(h.svc) != "":
			k.add(Finding{ID: CheckHostService, Status: DiagOK, Subject: subj, Summary: "load balancer address " + LoadBalancerAddress(h.svc), Evidence: ev})
		case h.svc.Spec.Type == corev1.ServiceTypeLoadBalancer && addr != "":
			k.add(Finding{ID: CheckHostService, Status: DiagOK, Subject: subj, Summary: "LoadBalancer <pending>; agents use the published address " + addr, Evidence: ev})
		case h.svc.Spec.Type == corev1.ServiceTypeLoadBalancer:
			k.add(Finding{ID: CheckHostService, Status: DiagWarn, Subject: subj, Summary: "LoadBalancer <pending>: agents need a NodePort or another published address", Evidence: ev,
				Fix: &Fix{Action: "publish one of the candidates", KsMc: append(append([]string{}, initHost...), "--proxy-publish-address="+ProxyAddressExample)}})
		default:
			k.add(Finding{ID: CheckHostService, Status: DiagOK, Subject: subj, Summary: "Service type " + string(h.svc.Spec.Type), Evidence: ev})
		}
	}
	return ports
}

func (k *checker) hostAddressCheck(ports []int32) {
	h, initHost, addr := k.h, k.initHostArgs(), k.h.healthAddr
	const subj = "host"
	switch {
	case addr == "":
		k.add(Finding{ID: CheckHostAddress, Status: DiagFail, Subject: subj, Summary: "no proxyPublishAddress: agents have nowhere to connect (\"waiting for the cluster to join\")",
			Fix: &Fix{Action: "publish the proxy's address", Setting: ccObject + " spec.multicluster.proxyPublishAddress", KsMc: append(append([]string{}, initHost...), "--proxy-publish-address="+ProxyAddressExample)}})
	default:
		port := 0
		if u, err := url.Parse(addr); err == nil {
			port, _ = strconv.Atoi(u.Port())
		}
		match := h.svc == nil
		for _, p := range ports {
			match = match || int(p) == port
		}
		ev := []string{"proxyPublishAddress " + addr}
		if h.addrFromLB {
			ev = []string{"no proxyPublishAddress: KubeSphere publishes the tower Service's load balancer " + addr}
		}
		if h.cc != nil && h.cfg != nil && h.cc.ProxyPublishAddress() != h.cfg.Multicluster.ProxyPublishAddress {
			ev = append(ev, "the ClusterConfiguration says "+strconv.Quote(h.cc.ProxyPublishAddress())+", kubesphere-config "+strconv.Quote(h.cfg.Multicluster.ProxyPublishAddress))
		}
		if match {
			k.add(Finding{ID: CheckHostAddress, Status: DiagOK, Subject: subj, Summary: "proxyPublishAddress " + addr + " matches the tower Service's ports", Evidence: ev})
		} else {
			ev = append(ev, fmt.Sprintf("port %d is none of the tower Service's ports %v (port, nodePort, targetPort)", port, ports))
			k.add(Finding{ID: CheckHostAddress, Status: DiagFail, Subject: subj, Summary: fmt.Sprintf("proxyPublishAddress %s: port %d is not a port of the tower Service", addr, port), Evidence: ev,
				Fix: &Fix{Action: "publish the address with the Service's port", Setting: ccObject + " spec.multicluster.proxyPublishAddress",
					KsMc: append(append([]string{}, initHost...), "--proxy-publish-address="+ProxyAddressExample)}})
		}
	}
}

func (k *checker) hostRestartCheck() {
	h := k.h
	const subj = "host"
	switch {
	case h.restartErr != nil:
		k.add(Finding{ID: CheckHostRestart, Status: DiagWarn, Subject: subj, Summary: "cannot tell whether ks-apiserver picked up the settings", Evidence: []string{errText(h.restartErr)}})
	case h.restart:
		k.add(Finding{ID: CheckHostRestart, Status: DiagWarn, Subject: subj, Summary: "ks-apiserver has not restarted since the multicluster settings last changed", Evidence: []string{h.restartWhy},
			Fix: &Fix{Action: "restart ks-apiserver", Kubectl: append([]string{"-n", kubesphere.Namespace, "rollout", "restart", "deployment/ks-apiserver"}, hostCtxArgs(h.c)...)}})
	case h.cc != nil:
		k.add(Finding{ID: CheckHostRestart, Status: DiagOK, Subject: subj, Summary: "ks-apiserver restarted after the settings changed"})
	}
}

func (k *checker) hostHealthCheck() {
	h, addr := k.h, k.h.healthAddr
	const subj = "host"
	if addr != "" {
		if h.health == nil {
			k.add(Finding{ID: CheckHostHealth, Status: DiagOK, Subject: subj, Summary: "GET " + addr + "/health answers from this machine", LatencyMS: ms(h.healthRTT)})
		} else {
			k.add(Finding{ID: CheckHostHealth, Status: DiagWarn, Subject: subj, Summary: addr + "/health does not answer from this machine (members may still reach it)",
				Evidence: []string{h.health.Error()}, Fix: &Fix{Action: "check the address from a member node: curl " + addr + "/health"}})
		}
	}
}

func replicas(d *appsv1.Deployment) int32 {
	if d == nil {
		return 0
	}
	if d.Spec.Replicas != nil {
		return *d.Spec.Replicas
	}
	return 1
}

func (k *checker) clusterChecks(c *unstructured.Unstructured) {
	name := c.GetName()
	subj := "cluster/" + name
	conds := ClusterConditions(c)
	host := IsHostCluster(c)
	m := k.byCluster[name]
	ready := conditionTrue(conds, kubesphere.ConditionReady)
	if ready {
		k.add(Finding{ID: CheckClusterConditions, Status: DiagOK, Subject: subj, Summary: DescribeConditions(conds)})
	} else {
		f := Finding{ID: CheckClusterConditions, Status: DiagFail, Subject: subj, Summary: "not Ready: " + DescribeConditions(conds)}
		if !host {
			f.Fix = &Fix{Action: "see the tunnel and member checks of this cluster", See: CheckClusterTunnel}
		}
		k.add(f)
	}
	if ts := c.GetDeletionTimestamp(); ts != nil {
		f := Finding{ID: CheckClusterTerminating, Status: DiagFail, Subject: subj,
			Summary:  fmt.Sprintf("Terminating for %s, held by finalizers %v", fmtAge(k.now.Sub(ts.Time)), c.GetFinalizers()),
			Evidence: []string{"KubeSphere's finalizer cleans up the member through the tunnel before releasing the Cluster; with the member unreachable it never finishes, and KubeSphere 3.4's Cluster webhook also refuses updates it cannot validate against the member"}}
		args := []string{"unjoin", "--name", name}
		args = append(args, k.hostFlag...)
		f.Fix = &Fix{Action: "bring the member back so KubeSphere finishes the deletion; if it is gone for good, remove the Cluster and its finalizer with unjoin --force (this leaves the member's agent and settings behind)",
			KsMc: append(args, "--force")}
		k.add(f)
	} else {
		k.add(Finding{ID: CheckClusterTerminating, Status: DiagOK, Subject: subj, Summary: "not being deleted"})
	}
	if host {
		return
	}
	// Versions: the host must not be older than the member.
	hv, mv := "", ""
	if k.h.cc != nil {
		hv = k.h.cc.Version()
	}
	mv, _, _ = unstructured.NestedString(c.Object, "status", "kubeSphereVersion")
	if m != nil && m.cc != nil && m.cc.Version() != "" {
		mv = m.cc.Version()
	}
	if hM, hm, hp, ok1 := kubeSphereVersion(hv); ok1 {
		if mM, mm, mp, ok2 := kubeSphereVersion(mv); ok2 {
			if mM > hM || (mM == hM && mm > hm) || (mM == hM && mm == hm && mp > hp) {
				k.add(Finding{ID: CheckClusterVersion, Status: DiagWarn, Subject: subj, Summary: "the member runs a newer KubeSphere (" + mv + ") than the host (" + hv + ")",
					Fix: &Fix{Action: "upgrade the host first: KubeSphere supports host >= member"}})
			} else {
				k.add(Finding{ID: CheckClusterVersion, Status: DiagOK, Subject: subj, Summary: "host " + hv + " >= member " + mv})
			}
		}
	}
	k.certCheck(c, subj)
	if connectionType(c) != "proxy" {
		return
	}
	// Duplicate kubernetesAPIServerPort.
	port, _, _ := unstructured.NestedInt64(c.Object, "spec", "connection", "kubernetesAPIServerPort")
	var dups []string
	for i := range k.h.clusters {
		o := &k.h.clusters[i]
		if o.GetName() == name {
			continue
		}
		if p, _, _ := unstructured.NestedInt64(o.Object, "spec", "connection", "kubernetesAPIServerPort"); p != 0 && p == port {
			dups = append(dups, o.GetName())
		}
	}
	if len(dups) > 0 {
		sort.Strings(dups)
		k.add(Finding{ID: CheckClusterPort, Status: DiagFail, Subject: subj, Summary: fmt.Sprintf("kubernetesAPIServerPort %d is also used by %v (a Tower defect): one of them is unreachable", port, dups),
			Fix: &Fix{Action: "give one of them a free port (6000-7000), then restart the proxy", Setting: "Cluster " + name + " spec.connection.kubernetesAPIServerPort and kubesphereAPIServerPort (+10000)"}})
	} else if port != 0 {
		k.add(Finding{ID: CheckClusterPort, Status: DiagOK, Subject: subj, Summary: fmt.Sprintf("kubernetesAPIServerPort %d is unique", port)})
	}
	k.tunnelCheck(c, subj, conds, m)
	k.protocolCheck(c, subj, m)
	if m == nil {
		k.add(Finding{ID: CheckClusterMember, Status: DiagSkip, Subject: subj, Summary: "no member context matched this Cluster: member-side checks did not run",
			Fix: &Fix{Action: "pass the member's context (or --all-contexts) to run them", KsMc: append(append([]string{"diagnose"}, k.hostFlag...), "--context", "CONTEXT_OF_"+name)}})
	}
}

func (k *checker) certCheck(c *unstructured.Unstructured, subj string) {
	kc, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
	if kc == "" {
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagSkip, Subject: subj, Summary: "no kubeconfig in the Cluster yet (written when the agent connects)"})
		return
	}
	raw, err := base64.StdEncoding.DecodeString(kc)
	if err != nil {
		raw = []byte(kc)
	}
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagFail, Subject: subj, Summary: "the Cluster's kubeconfig does not parse"})
		return
	}
	var certPEM []byte
	if ctx := cfg.Contexts[cfg.CurrentContext]; ctx != nil && cfg.AuthInfos[ctx.AuthInfo] != nil {
		certPEM = cfg.AuthInfos[ctx.AuthInfo].ClientCertificateData
	}
	if len(certPEM) == 0 {
		for _, a := range cfg.AuthInfos {
			if len(a.ClientCertificateData) > 0 {
				certPEM = a.ClientCertificateData
			}
		}
	}
	if len(certPEM) == 0 {
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagOK, Subject: subj, Summary: "the Cluster's kubeconfig has no client certificate (token or other credentials)"})
		return
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagFail, Subject: subj, Summary: "the kubeconfig's client certificate is not PEM"})
		return
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagFail, Subject: subj, Summary: "the kubeconfig's client certificate does not parse"})
		return
	}
	left := cert.NotAfter.Sub(k.now)
	ev := []string{"subject " + cert.Subject.CommonName + ", not after " + cert.NotAfter.UTC().Format(time.RFC3339)}
	fix := &Fix{Action: "have the proxy write a fresh kubeconfig: it renews a kubeconfig whose certificate is expired or near its end when the agent reconnects (ks-mc proxy); for Tower, re-create the kubeconfig from the member",
		Kubectl: append([]string{"-n", kubesphere.Namespace, "rollout", "restart", "deployment/tower"}, hostCtxArgs(k.h.c)...)}
	switch {
	case left <= 0:
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagFail, Subject: subj, Summary: "the kubeconfig's client certificate expired " + fmtAge(-left) + " ago", Evidence: ev, Fix: fix})
	case cert.NotBefore.After(k.now):
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagFail, Subject: subj, Summary: "the kubeconfig's client certificate is not valid yet", Evidence: ev, Fix: fix})
	case left < certWarnBefore:
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagWarn, Subject: subj, Summary: "the kubeconfig's client certificate expires in " + fmtAge(left), Evidence: ev, Fix: fix})
	default:
		k.add(Finding{ID: CheckClusterCertificate, Status: DiagOK, Subject: subj, Summary: "client certificate valid for " + fmtAge(left), Evidence: ev})
	}
}

// protocolCheck says which agent protocol the member connects with (the ks-mc proxy's heartbeat
// Lease; every agent is a Tower agent behind KubeSphere's Tower) and flags a Tower agent as
// weaker: its token sits in the Deployment's command line, and over ws:// the proxy is not
// authenticated (a Tower agent verifies no certificate), so anyone on the path can take the token.
func (k *checker) protocolCheck(c *unstructured.Unstructured, subj string, m *memberData) {
	name := c.GetName()
	f := Finding{ID: CheckClusterProtocol, Subject: subj}
	proto := ""
	hostTower := TunnelOf(k.h.tower) == kubesphere.TunnelTower
	switch {
	case hostTower:
		proto = string(kubesphere.TunnelTower)
		f.Sources = append(f.Sources, "host runs KubeSphere's Tower")
	case k.h.leases[name] != nil && LeaseProtocol(k.h.leases[name]) != "":
		proto = LeaseProtocol(k.h.leases[name])
		f.Sources = append(f.Sources, SourceHeartbeat)
	case m != nil && m.agent != nil:
		proto = string(InspectAgent(m.agent).Tunnel)
		f.Sources = append(f.Sources, SourceMemberAgent)
	case c.GetAnnotations()[kubesphere.AgentProtocolAnnotation] == string(kubesphere.TunnelKsMc):
		proto = string(kubesphere.TunnelKsMc)
		f.Sources = append(f.Sources, "Cluster annotation "+kubesphere.AgentProtocolAnnotation)
	}
	ctxName := "CONTEXT_OF_" + name
	if m != nil && m.c.Context != "" {
		ctxName = m.c.Context
	}
	switch proto {
	case string(kubesphere.TunnelKsMc):
		f.Status = DiagOK
		f.Summary = "the member connects with the ks-mc agent"
	case string(kubesphere.TunnelTower):
		f.Status = DiagWarn
		f.Summary = "the member connects with a Tower agent: weaker than the ks-mc agent"
		f.Evidence = []string{
			"the agent's token is in its Deployment's command line (readable by anyone who may read Deployments on the member)",
			"over ws:// the agent does not authenticate the proxy (Tower agents verify no certificate): anyone on the path can take the token and pose as the proxy",
		}
		if hostTower {
			f.Fix = &Fix{Action: "switch the host to the ks-mc proxy (Tower members stay connected), then move each member: kubectl ks-mc migrate " +
				strings.Join(append(append([]string{}, k.hostFlag...), "--context", ctxName), " "),
				KsMc: append(append([]string{"init-host"}, hostCtxArgs(k.h.c)...), "--tunnel=ks-mc")}
		} else {
			f.Fix = &Fix{Action: "move the member to the ks-mc agent (no failed request)", KsMc: append(append([]string{"migrate"}, k.hostFlag...), "--context", ctxName)}
		}
	default:
		return
	}
	k.add(f)
}
