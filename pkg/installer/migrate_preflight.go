package installer

import (
	"context"
	"errors"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

func (m *Migrate) hostPreflight(ctx context.Context, p *Preflight) *migrateHost {
	h := side(m.host, "host")
	hint := initHostHint(m.host)
	cc, cfg, ok := m.hostKubeSphere(ctx, p, h, hint)
	if !ok {
		return nil
	}
	tower := m.hostProxy(ctx, p, h, hint)
	if tower == nil {
		return nil
	}
	hs := &migrateHost{towerAgents: manifests.ProxyTowerAgents(tower)}
	p.OK("%s: the ks-mc proxy runs (Tower agents: %s)", h, hs.towerAgents)
	if !m.hostDialAddress(ctx, p, hs, h, hint, cc, cfg, tower) {
		return nil
	}
	hs.agentImage = m.opts.AgentImage
	hostAccess, _ := MigrateAccess()
	checkAccessSide(ctx, p, m.host, h, hostAccess)
	var err error
	if hs.uid, err = KubeSystemUID(ctx, m.host); err != nil {
		p.Error("", "%s: %v", h, err)
		return nil
	}
	if hs.clusters, err = ListClusters(ctx, m.host); err != nil {
		p.Error("", "%s: %v", h, err)
		return nil
	}
	return hs
}

// hostKubeSphere checks that the host is reachable and runs KubeSphere as the host cluster
// (false when it does not).
func (m *Migrate) hostKubeSphere(ctx context.Context, p *Preflight, h, hint string) (*ClusterConfiguration, *KubeSphereConfig, bool) {
	if _, err := m.host.Kube.Discovery().ServerVersion(); err != nil {
		p.Error("check --host-context/--host-kubeconfig and that the API server is up", "%s: unreachable: %v", h, err)
		return nil, nil, false
	}
	cc, err := GetClusterConfiguration(ctx, m.host)
	if err != nil {
		if errors.Is(err, ErrKubeSphereNotInstalled) {
			p.Error(InstallKubeSphereHint, "%s: KubeSphere is not installed (no %s)", h, ccObject)
		} else {
			p.Error("", "%s: %v", h, err)
		}
		return nil, nil, false
	}
	if role := cc.ClusterRole(); role != kubesphere.RoleHost {
		p.Error(hint, "%s: multicluster.clusterRole is %q, not host", h, role)
		return nil, nil, false
	}
	cfg, err := GetKubeSphereConfig(ctx, m.host)
	if err != nil {
		p.Error("", "%s: %v", h, err)
		return nil, nil, false
	}
	return cc, cfg, true
}

// hostProxy returns the host's rolled-out ks-mc proxy Deployment (nil when there is none).
func (m *Migrate) hostProxy(ctx context.Context, p *Preflight, h, hint string) *appsv1.Deployment {
	tower, err := m.host.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		p.Error(hint+" --tunnel=ks-mc", "%s: Deployment %s/%s (the proxy) does not exist", h, kubesphere.Namespace, kubesphere.TowerName)
		return nil
	case err != nil:
		p.Error("", "%s: get deployment %s/%s: %v", h, kubesphere.Namespace, kubesphere.TowerName, err)
		return nil
	}
	if TunnelOf(tower) != kubesphere.TunnelKsMc {
		p.Error(fmt.Sprintf("switch the host first: kubectl ks-mc init-host%s --tunnel=ks-mc (its proxy keeps serving the Tower agents)", m.host.contextFlag()),
			"%s: Deployment %s/%s runs KubeSphere's Tower, not the ks-mc proxy: there is nothing to migrate to", h, kubesphere.Namespace, kubesphere.TowerName)
		return nil
	}
	if ready, why := DeploymentRolledOut(tower); !ready {
		p.Error("wait for it: kubectl -n kubesphere-system rollout status deployment/tower"+m.host.contextFlag(), "%s: the ks-mc proxy is not rolled out: %s", h, why)
		return nil
	}
	return tower
}

// hostDialAddress sets the address the ks-mc agents dial and its CA pin (false when unusable).
func (m *Migrate) hostDialAddress(ctx context.Context, p *Preflight, hs *migrateHost, h, hint string, cc *ClusterConfiguration, cfg *KubeSphereConfig, tower *appsv1.Deployment) bool {
	addr := HostProxyAddress(ctx, m.host, cc, cfg)
	if addr == "" {
		p.Error(hint+" --tunnel=ks-mc --proxy-publish-address=https://HOST:PORT", "%s: no proxy address is published", h)
		return false
	}
	if norm, err := ValidateProxyAddress(addr); err != nil {
		p.Error(hint, "%s: %v", h, err)
		return false
	} else {
		addr = norm
	}
	if err := PlaintextAgentRefused(kubesphere.TunnelKsMc, addr, tower); err != nil {
		p.Error(PlaintextAgentAdvice(m.host, addr), "%s: %v", h, err)
		return false
	}
	hs.proxyAddress = addr
	hs.caHash = m.opts.CACertHash
	if strings.HasPrefix(addr, "https://") && hs.caHash == "" {
		pin, err := ProxyCACertHash(ctx, m.host)
		if err != nil {
			p.Error("pass --ca-cert-hash=sha256:… (the annotation ks-mc.io/ca-cert-hash of that Secret)", "%s: the proxy address is https but its CA cannot be pinned: %v", h, err)
			return false
		}
		hs.caHash = pin
	}
	p.OK("%s: the ks-mc agents will dial %s", h, addr)
	return true
}

func (m *Migrate) memberPreflight(ctx context.Context, hs *migrateHost, mm *migrateMember, seen map[string]string) *Preflight {
	p := &Preflight{}
	ms := side(mm.c, "member")
	if !m.memberMatch(ctx, p, hs, mm, seen, ms) {
		return p
	}
	name, ok := m.memberConnection(p, mm)
	if !ok {
		return p
	}
	if !m.memberAgents(ctx, p, mm, ms, name) {
		return p
	}
	m.memberPlan(ctx, p, hs, mm, ms, name)
	return p
}

// memberMatch finds the host's Cluster of the member (false when the member is skipped or has none).
func (m *Migrate) memberMatch(ctx context.Context, p *Preflight, hs *migrateHost, mm *migrateMember, seen map[string]string, ms string) bool {
	r := mm.res
	uid, err := KubeSystemUID(ctx, mm.c)
	if err != nil {
		p.Error("check --context and that the API server is up", "%s: unreachable: %v", ms, err)
		return false
	}
	mm.uid = uid
	if uid == hs.uid {
		r.Result, r.Reason = MigrateSkipped, "it is the host itself"
		return false
	}
	if prev, ok := seen[uid]; ok {
		r.Result, r.Reason = MigrateSkipped, "the same cluster as context "+prev
		return false
	}
	seen[uid] = mm.c.Context
	for i := range hs.clusters {
		c := &hs.clusters[i]
		if !IsHostCluster(c) && ClusterMemberUID(c) == uid {
			mm.cluster = c
		}
	}
	if mm.cluster == nil {
		if m.opts.SkipUnmatched {
			r.Result, r.Reason = MigrateSkipped, "not a member of this host (no Cluster with kube-system UID "+uid+")"
			return false
		}
		p.Error(fmt.Sprintf("join it first: kubectl ks-mc join%s --host-context %s", mm.c.contextFlag(), m.host.Context),
			"%s: no Cluster of the host belongs to it (kube-system UID %s)", ms, uid)
		return false
	}
	return true
}

// memberConnection reads the Cluster's proxy connection (false when it has none to migrate).
func (m *Migrate) memberConnection(p *Preflight, mm *migrateMember) (string, bool) {
	r := mm.res
	name := mm.cluster.GetName()
	r.Name = name
	if typ, _, _ := unstructured.NestedString(mm.cluster.Object, "spec", "connection", "type"); typ != "proxy" {
		r.Result, r.Reason = MigrateSkipped, fmt.Sprintf("Cluster %s is a %q connection: it uses no agent", name, typ)
		return "", false
	}
	mm.token, _, _ = unstructured.NestedString(mm.cluster.Object, "spec", "connection", "token")
	if mm.token == "" {
		p.Error("check the host's proxy: kubectl -n kubesphere-system logs deployment/tower"+m.host.contextFlag(), "Cluster %s has no spec.connection.token", name)
		return "", false
	}
	mm.annotated = mm.cluster.GetAnnotations()[kubesphere.AgentProtocolAnnotation] == string(kubesphere.TunnelKsMc)
	return name, true
}

// memberAgents finds the member's Tower and ks-mc agents (false when the preflight ends there).
func (m *Migrate) memberAgents(ctx context.Context, p *Preflight, mm *migrateMember, ms, name string) bool {
	r := mm.res
	ds, err := GetAgentDeployments(ctx, mm.c)
	if err != nil {
		p.Error("", "%s: %v", ms, err)
		return false
	}
	for _, d := range ds {
		info := InspectAgent(d)
		if info.ClusterName != "" && info.ClusterName != name {
			p.Error(fmt.Sprintf("check the member: kubectl -n %s get deployment %s -o yaml%s", kubesphere.Namespace, d.Name, mm.c.contextFlag()),
				"%s: Deployment %s/%s serves cluster %q, not %q", ms, kubesphere.Namespace, d.Name, info.ClusterName, name)
			return false
		}
		switch {
		case info.Tunnel == kubesphere.TunnelTower && d.Name == kubesphere.AgentName:
			mm.tower = d
		case info.Tunnel == kubesphere.TunnelKsMc:
			mm.ksmc = d
		}
	}
	switch {
	case mm.tower == nil && mm.ksmc == nil:
		p.Error(fmt.Sprintf("re-run join, which renders the ks-mc agent: kubectl ks-mc join%s --host-context %s --name %s", mm.c.contextFlag(), m.host.Context, name),
			"%s: no agent Deployment (neither the Tower agent %s nor a ks-mc agent)", ms, kubesphere.AgentName)
		return false
	case mm.tower == nil && mm.annotated:
		r.Result, r.Protocol = MigrateAlreadyMigrated, string(kubesphere.TunnelKsMc)
		r.Reason = fmt.Sprintf("already migrated: the member runs the ks-mc agent (Deployment %s/%s)", kubesphere.Namespace, mm.ksmc.Name)
		m.rep.Step(fmt.Sprintf("member (%s): Cluster %s already migrated (ks-mc agent %s/%s): nothing to change", mm.c.Context, name, kubesphere.Namespace, mm.ksmc.Name))
		return false
	case mm.tower == nil:
		p.OK("%s: runs the ks-mc agent already (Deployment %s/%s); the Cluster lacks %s", ms, kubesphere.Namespace, mm.ksmc.Name, kubesphere.AgentProtocolAnnotation)
		mm.deployName = mm.ksmc.Name
		return false
	}
	return true
}

// memberPlan reports the ks-mc agent that will run next to the Tower one.
func (m *Migrate) memberPlan(ctx context.Context, p *Preflight, hs *migrateHost, mm *migrateMember, ms, name string) {
	mm.deployName = kubesphere.MigratedAgentName
	if mm.ksmc != nil && mm.ksmc.Name == kubesphere.MigratedAgentName {
		p.OK("%s: Tower agent %s/%s and a ks-mc agent %s/%s from an earlier run: continuing", ms, kubesphere.Namespace, kubesphere.AgentName, kubesphere.Namespace, mm.ksmc.Name)
	} else {
		p.OK("%s: Tower agent %s/%s for Cluster %s: the ks-mc agent %s/%s will run next to it", ms, kubesphere.Namespace, kubesphere.AgentName, name, kubesphere.Namespace, kubesphere.MigratedAgentName)
	}
	if hs.towerAgents == "never" {
		p.Warn("", "the proxy refuses Tower agents (--tower-agents=never): the member is disconnected until its ks-mc agent connects")
	} else if mm.annotated {
		p.Warn("", "Cluster %s says %s: ks-mc, so the proxy no longer serves its Tower agent: the member is disconnected until its ks-mc agent connects", name, kubesphere.AgentProtocolAnnotation)
	}
	_, memberAccess := MigrateAccess()
	checkAccessSide(ctx, p, mm.c, ms, memberAccess)
}
