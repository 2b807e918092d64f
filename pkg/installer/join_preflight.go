package installer

import (
	"context"
	"errors"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// Preflight checks both clusters without changing anything and reports all findings together.
// The plan's state is nil when a check failed or a side could not be read far enough to continue.
func (j *Join) Preflight(ctx context.Context) *Plan[*joinState] {
	plan := &Plan[*joinState]{}
	p, st := plan.Findings(), &joinState{}
	if err := manifests.ValidateClusterName(j.opts.Name); err != nil {
		p.Error("pass a valid --name", "%v", err)
	}
	hostOK := j.hostPreflight(ctx, p, st)
	memberOK := j.memberPreflight(ctx, p, st)
	if hostOK && memberOK {
		j.crossPreflight(ctx, p, st)
	}
	if !p.HasErrors() {
		plan.State = st
	}
	return plan
}

func (j *Join) hostPreflight(ctx context.Context, p *Preflight, st *joinState) bool {
	h := side(j.host, "host")
	if !reachableCheck(p, j.host, h, "check --host-context/--host-kubeconfig and that the API server is up") {
		return false
	}
	cc := readClusterConfiguration(ctx, p, j.host, h)
	if cc == nil {
		return false
	}
	st.hostCC = cc
	hint := initHostHint(j.host)
	ok := true
	if role := cc.ClusterRole(); role != kubesphere.RoleHost {
		p.Error(hint, "%s: multicluster.clusterRole is %q, not host", h, role)
		ok = false
	}
	cfg, err := GetKubeSphereConfig(ctx, j.host)
	if err != nil {
		p.Error(hint, "%s: %v", h, err)
		return false
	}
	st.hostCfg = cfg
	if ok && !cfg.Multicluster.Enable {
		p.Error(hint, "%s: kubesphere-config has multicluster.enable false (ks-installer has not finished the host set-up)", h)
		ok = false
	}
	if ok && cc.ComponentStatus("multicluster") != "enabled" {
		p.Error(hint, "%s: ClusterConfiguration status.multicluster.status is %q, not enabled", h, cc.ComponentStatus("multicluster"))
		ok = false
	}
	if cfg.Authentication.JWTSecret.IsZero() {
		p.Error("check ConfigMap kubesphere-system/kubesphere-config on the host", "%s: kubesphere-config has no authentication.jwtSecret", h)
		ok = false
	}
	j.jwt = cfg.Authentication.JWTSecret
	if !ok {
		return false
	}
	if !j.agentTargetCheck(ctx, p, st, h, hint) {
		return false
	}
	p.OK("%s: tunnel %s", h, st.tunnel)
	hostAccess, _ := JoinAccess()
	checkAccessSide(ctx, p, j.host, h, hostAccess)
	uid, err := KubeSystemUID(ctx, j.host)
	if err != nil {
		p.Error("", "%s: %v", h, err)
		return false
	}
	st.hostUID = uid
	return true
}

func (j *Join) memberPreflight(ctx context.Context, p *Preflight, st *joinState) bool {
	m := side(j.member, "member")
	if !reachableCheck(p, j.member, m, "check --context/--kubeconfig and that the API server is up") {
		return false
	}
	uid, err := KubeSystemUID(ctx, j.member)
	if err != nil {
		p.Error("", "%s: %v", m, err)
		return false
	}
	st.memberUID = uid
	cc := readClusterConfiguration(ctx, p, j.member, m)
	if cc == nil {
		return false
	}
	st.memberCC = cc
	switch role := cc.ClusterRole(); role {
	case kubesphere.RoleHost:
		p.Error("join another cluster, or pick the right --context", "%s: it is a KubeSphere host (clusterRole host): a host cannot join another host", m)
		return false
	case kubesphere.RoleMember:
		p.OK("%s: KubeSphere %s, already clusterRole member", m, cc.Version())
	default:
		p.OK("%s: KubeSphere %s, clusterRole %s (will become member)", m, cc.Version(), role)
	}
	cfg, err := GetKubeSphereConfig(ctx, j.member)
	if err != nil {
		p.Error("", "%s: %v", m, err)
		return false
	}
	st.memberCfg = cfg
	// Pod logs go through the kubelet, which may be slow or unreachable: the check is advisory.
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	inst, err := GetInstallerState(lctx, j.member, time.Time{})
	cancel()
	if err == nil {
		switch inst.Phase {
		case InstallerRunning:
			p.Warn("join waits for it", "%s: %s", m, inst.Describe())
		case InstallerFailed:
			p.Warn("see "+InstallerLogsCommand(j.member.Context), "%s: the last ks-installer run failed at task %q", m, inst.Task)
		}
	}
	_, memberAccess := JoinAccess()
	checkAccessSide(ctx, p, j.member, m, memberAccess)
	agent, err := GetAgentDeployment(ctx, j.member)
	if err != nil {
		p.Error("", "%s: %v", m, err)
		return false
	}
	st.agent = agent
	st.agentName = kubesphere.AgentName
	if agent != nil && agent.Name == kubesphere.MigratedAgentName {
		st.agentName = kubesphere.MigratedAgentName
	}
	return true
}

// agentTargetCheck resolves where the agent connects (resolveAgentTarget) and words each failed
// step as a check. False when one failed.
func (j *Join) agentTargetCheck(ctx context.Context, p *Preflight, st *joinState, h, hint string) bool {
	cc, cfg := st.hostCC, st.hostCfg
	t, terr := resolveAgentTarget(ctx, j.host, cc, cfg, agentWants{
		Tunnel: j.opts.Tunnel, AgentImage: j.opts.AgentImage, CACertHash: j.opts.CACertHash, Strict: true,
	})
	st.proxyAddress, st.tunnel, st.agentImage, st.caHash = t.Address, t.Tunnel, t.Image, t.CACertHash
	if terr != nil && terr.Step == targetAddress {
		if terr.Err == nil {
			p.Error(hint+" (with --proxy-publish-address when the tower Service has no external address)",
				"%s: no proxy address: multicluster.proxyPublishAddress is unset and Service %s/%s has no load balancer address", h, kubesphere.Namespace, kubesphere.TowerName)
		} else {
			p.Error(hint, "%s: %v", h, terr.Err)
		}
		return false
	}
	p.OK("%s: KubeSphere %s host, multicluster enabled, proxy address %s", h, cc.Version(), t.Address)
	if terr != nil && terr.Step == targetTower {
		if apierrors.IsNotFound(terr.Err) {
			p.Error(hint, "%s: Deployment %s/%s (the proxy) does not exist", h, kubesphere.Namespace, kubesphere.TowerName)
		} else {
			p.Error("", "%s: %v", h, terr.Err)
		}
		return false
	}
	if terr != nil && terr.Step == targetTunnel {
		p.Error(fmt.Sprintf("use --tunnel=%s (or --tunnel=auto)", t.HostTunnel),
			"%s: the host runs the %s proxy, but --tunnel=%s was asked for: that agent cannot talk to it", h, t.HostTunnel, t.Tunnel)
		return false
	}
	if ready, why := DeploymentRolledOut(t.Tower); !ready {
		p.Warn("check: kubectl -n kubesphere-system get pods -l app=tower"+j.host.contextFlag(), "%s: the proxy (deployment tower) is not available yet: %s", h, why)
	}
	if terr != nil && terr.Step == targetPlaintext {
		p.Error(PlaintextAgentAdvice(j.host, t.Address), "%s: %v", h, terr.Err)
		return false
	}
	if terr != nil {
		p.Error("pass --ca-cert-hash=sha256:… (the annotation ks-mc.io/ca-cert-hash of that Secret)", "%s: the proxy address is https but its CA cannot be pinned: %v", h, terr.Err)
		return false
	}
	if t.PinnedFromHost {
		p.OK("%s: proxy CA pinned (%s)", h, t.CACertHash)
	}
	return true
}

// reachableCheck: the side's API server answers (its version is reported).
func reachableCheck(p *Preflight, c *Clients, side, hint string) bool {
	ver, err := c.Kube.Discovery().ServerVersion()
	if err != nil {
		p.Error(hint, "%s: unreachable: %v", side, err)
		return false
	}
	p.OK("%s: reachable, Kubernetes %s", side, ver.GitVersion)
	return true
}

// readClusterConfiguration reads the side's ClusterConfiguration; nil (with the error as a
// check) when KubeSphere is not installed or it cannot be read.
func readClusterConfiguration(ctx context.Context, p *Preflight, c *Clients, side string) *ClusterConfiguration {
	cc, err := GetClusterConfiguration(ctx, c)
	switch {
	case errors.Is(err, ErrKubeSphereNotInstalled):
		p.Error(InstallKubeSphereHint, "%s: KubeSphere is not installed (no %s)", side, ccObject)
		return nil
	case err != nil:
		p.Error("", "%s: %v", side, err)
		return nil
	}
	return cc
}

// checkAccessSide runs CheckAccessInto and prefixes its lines with the side ("host (ctx): ").
func checkAccessSide(ctx context.Context, p *Preflight, c *Clients, side string, wants []Access) {
	sub := &Preflight{}
	CheckAccessInto(ctx, sub, c, wants)
	for _, chk := range sub.Checks {
		chk.Message = side + ": " + chk.Message
		p.Checks = append(p.Checks, chk)
	}
}

// crossPreflight compares the two sides: versions, clocks, identity (is the member joined
// already, is the Cluster name free) and a leftover agent.
func (j *Join) crossPreflight(ctx context.Context, p *Preflight, st *joinState) {
	j.versionsCheck(p, st)
	j.clockCheck(ctx, p, st)
	if j.identityCheck(ctx, p, st) {
		j.leftoverAgentCheck(p, st)
	}
}

func (j *Join) versionsCheck(p *Preflight, st *joinState) {
	hv, mv := st.hostCC.Version(), st.memberCC.Version()
	hM, hm, hp, ok1 := kubeSphereVersion(hv)
	mM, mm, mp, ok2 := kubeSphereVersion(mv)
	switch {
	case !ok1 || !ok2:
		p.Warn("", "KubeSphere versions: host %q, member %q: cannot compare", hv, mv)
	case hM != mM || hm != mm:
		p.Warn("upgrade so that both run the same minor version", "KubeSphere versions: host %s, member %s: not the same minor version (UI and workspace errors are likely)", hv, mv)
	case hp < mp:
		p.Warn("upgrade the host first", "KubeSphere versions: host %s is older than member %s", hv, mv)
	default:
		p.OK("KubeSphere versions: host %s, member %s", hv, mv)
	}
}

func (j *Join) clockCheck(ctx context.Context, p *Preflight, st *joinState) {
	maxSkew, err := st.hostCfg.MaximumClockSkewDuration()
	if err != nil {
		maxSkew = 10 * time.Second
	}
	ho, _, herr := j.opts.Clock(ctx, j.host)
	mo, _, merr := j.opts.Clock(ctx, j.member)
	switch {
	case herr != nil || merr != nil:
		p.Warn("compare the clocks of both clusters' nodes (NTP)", "clock skew: could not measure (%v)", errors.Join(herr, merr))
	default:
		skew := (ho - mo).Round(time.Second)
		if skew.Abs() > maxSkew {
			p.Error("synchronise the nodes' clocks (NTP): tokens would be refused with \"token used before issued\"",
				"clock skew: the host's clock is %s ahead of the member's, more than authentication.maximumClockSkew (%s)", skew, maxSkew)
		} else {
			p.OK("clock skew: %s (maximum %s)", skew.Abs(), maxSkew)
		}
	}
}

// identityCheck: the member is not the host, not joined under another name, and the Cluster name
// is free or this member's. False when a check failed.
func (j *Join) identityCheck(ctx context.Context, p *Preflight, st *joinState) bool {
	h, m := side(j.host, "host"), side(j.member, "member")
	name := j.opts.Name
	if st.memberUID == st.hostUID {
		p.Error("pass the member's context with --context", "%s and %s are the same cluster (kube-system UID %s)", m, h, st.memberUID)
		return false
	}
	clusters, err := ListClusters(ctx, j.host)
	if err != nil {
		p.Error("", "%s: %v", h, err)
		return false
	}
	for i := range clusters {
		c := &clusters[i]
		uid := ClusterMemberUID(c)
		if c.GetName() == name {
			st.existing = c
			continue
		}
		if uid == st.memberUID {
			p.Error(fmt.Sprintf("it is joined already: re-run with --name %s, or unjoin it first (kubectl ks-mc unjoin%s --host-context %s --name %s)", c.GetName(), j.member.contextFlag(), j.host.Context, c.GetName()),
				"%s is already Cluster %q on the host (kube-system UID %s)", m, c.GetName(), uid)
			return false
		}
	}
	if c := st.existing; c != nil {
		uid := ClusterMemberUID(c)
		switch {
		case IsHostCluster(c):
			p.Error("choose another --name", "Cluster %q on the host is the host itself", name)
			return false
		case uid == st.memberUID:
			p.OK("Cluster %q exists for this member: re-run, it is adopted", name)
		case uid == "":
			p.Error("choose another --name, or delete that Cluster on the host if it is a leftover (kubectl delete cluster "+name+j.host.contextFlag()+")",
				"Cluster %q exists on the host but is not linked to any member yet (no status.uid); it may be waiting for another cluster's agent", name)
			return false
		default:
			p.Error("choose another --name", "Cluster %q on the host belongs to another cluster (kube-system UID %s, this member's is %s)", name, uid, st.memberUID)
			return false
		}
	} else {
		p.OK("Cluster %q: will be created on the host", name)
	}
	return true
}

func (j *Join) leftoverAgentCheck(p *Preflight, st *joinState) {
	m := side(j.member, "member")
	name := j.opts.Name
	if st.agent != nil {
		info := InspectAgent(st.agent)
		switch {
		case info.Tunnel == kubesphere.TunnelTower && st.tunnel == kubesphere.TunnelKsMc && st.existing != nil && info.ClusterName == name &&
			sameProxy(httpsAddress(info.ProxyServer), httpsAddress(st.proxyAddress)):
			// The host switched to the ks-mc proxy, which still serves this Tower agent: join
			// replaces the agent in place (a gap), migrate moves the member without a failed request.
			p.Warn(fmt.Sprintf("kubectl ks-mc migrate --host-context %s%s moves a Tower member without a failed request", j.host.Context, j.member.contextFlag()),
				"%s: the member runs KubeSphere's Tower agent (Deployment %s/%s), served by the host's ks-mc proxy: join replaces it in place, so its requests fail until the ks-mc agent connects",
				m, kubesphere.Namespace, kubesphere.AgentName)
		case info.ProxyServer != "" && !sameProxy(info.ProxyServer, st.proxyAddress):
			p.Error(fmt.Sprintf("unjoin it from that host first, or delete it: kubectl -n %s delete deployment %s%s", kubesphere.Namespace, kubesphere.AgentName, j.member.contextFlag()),
				"%s: Deployment %s/%s connects to another proxy (%s): is the member joined to another host?", m, kubesphere.Namespace, kubesphere.AgentName, info.ProxyServer)
		case st.existing == nil:
			p.Warn("", "%s: a leftover Deployment %s/%s (cluster %q) will be replaced", m, kubesphere.Namespace, kubesphere.AgentName, info.ClusterName)
		case info.ClusterName != "" && info.ClusterName != name:
			p.Warn("", "%s: Deployment %s/%s serves cluster %q; it will be replaced to serve %q", m, kubesphere.Namespace, kubesphere.AgentName, info.ClusterName, name)
		default:
			p.OK("%s: agent Deployment exists (%s tunnel)", m, info.Tunnel)
		}
	}
}
