package installer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// JoinOptions configure a join of a member to a host.
type JoinOptions struct {
	// Name of the Cluster on the host (a DNS label of at most 60 characters).
	Name string
	// Tunnel is tower, ks-mc or auto (ks-mc when the host's tower Deployment runs the ks-mc proxy).
	Tunnel manifests.Tunnel
	// Cluster metadata.
	Provider, Description, Group, Region string
	Labels                               map[string]string
	// AgentImage overrides the agent image (Tower: the host's multicluster.agentImage; ks-mc: this
	// build's image).
	AgentImage string
	// CACertHash pins the host proxy's CA for the bundled agent (needed with an https proxy address).
	CACertHash string
	// Timeout bounds the whole join (installer run, token, rollout, connection). Default 10m.
	Timeout time.Duration
	DryRun  DryRun
	// PollInterval between checks while waiting (default 2s).
	PollInterval time.Duration
	// OnPreflight receives all checks of both sides before any change (also when they fail).
	OnPreflight func(*Preflight)
	// Clock measures API server clocks (default APIServerClock); unit tests replace it.
	Clock ServerClock
}

// JoinResult is the machine-readable outcome of a join.
type JoinResult struct {
	Name         string           `json:"name"`
	HostContext  string           `json:"hostContext,omitempty"`
	Context      string           `json:"context,omitempty"`
	Tunnel       manifests.Tunnel `json:"tunnel"`
	ProxyAddress string           `json:"proxyAddress"`
	MemberUID    string           `json:"memberUID"`
	// Adopted is true when the Cluster already existed for this member (a re-run).
	Adopted bool     `json:"adopted"`
	DryRun  DryRun   `json:"dryRun,omitempty"`
	Changed bool     `json:"changed"`
	Changes []Change `json:"changes"`
	// Conditions of the Cluster at the end.
	Conditions []ClusterCondition `json:"conditions,omitempty"`
	// HostObjects and MemberObjects are what was (or, in a dry run, would be) applied to each
	// cluster, secrets redacted. The member's ClusterConfiguration appears as its merge patch.
	HostObjects   []*unstructured.Unstructured `json:"-"`
	MemberObjects []*unstructured.Unstructured `json:"-"`
	// Pending lists what a dry run could not determine without applying.
	Pending []string `json:"pending,omitempty"`
}

// joinState is what preflight learned.
type joinState struct {
	hostCC, memberCC   *ClusterConfiguration
	hostCfg, memberCfg *KubeSphereConfig
	hostUID, memberUID string
	proxyAddress       string
	tunnel             manifests.Tunnel
	agentImage         string
	existing           *unstructured.Unstructured
	agent              *appsv1.Deployment
	// caHash pins the bundled proxy's CA (https proxy addresses).
	caHash string
	// agentName is the agent Deployment to render: manifests.AgentName, or MigratedAgentName on a
	// member moved by migrate (the ks-mc agent keeps the Deployment it was migrated to).
	agentName string
}

// Join connects a member to a host through the agent tunnel. It never prints: progress goes to
// rep, preflight results to opts.OnPreflight.
type Join struct {
	host, member *Clients
	opts         JoinOptions
	rep          Reporter
	deadline     time.Time
	result       *JoinResult
	// jwt is the host's jwtSecret: used for the member patch and compared, never printed.
	jwt Secret
	// token is the agent token of the Cluster (never printed).
	token string
}

// NewJoin prepares a join.
func NewJoin(host, member *Clients, opts JoinOptions, rep Reporter) *Join {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Minute
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 2 * time.Second
	}
	if opts.Clock == nil {
		opts.Clock = APIServerClock
	}
	if opts.Tunnel == "" {
		opts.Tunnel = manifests.TunnelAuto
	}
	if opts.DryRun == "" {
		opts.DryRun = DryRunNone
	}
	return &Join{host: host, member: member, opts: opts, rep: reporterOrNop(rep)}
}

// JoinAccess is what join needs to be allowed to do on each side.
func JoinAccess() (host, member []Access) {
	host = []Access{
		{Verb: "get", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "list", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "create", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "patch", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "get", Resource: "configmaps", Namespace: KubeSphereNamespace, Name: KubeSphereConfigName},
	}
	member = []Access{
		{Verb: "patch", Group: "installer.kubesphere.io", Resource: "clusterconfigurations", Namespace: KubeSphereNamespace, Name: ClusterConfigurationName},
		{Verb: "create", Group: "apps", Resource: "deployments", Namespace: KubeSphereNamespace},
		{Verb: "patch", Group: "apps", Resource: "deployments", Namespace: KubeSphereNamespace},
		{Verb: "create", Resource: "secrets", Namespace: KubeSphereNamespace},
		{Verb: "patch", Resource: "secrets", Namespace: KubeSphereNamespace},
	}
	return host, member
}

func side(c *Clients, what string) string {
	if c != nil && c.Context != "" {
		return what + " (" + c.Context + ")"
	}
	return what
}

func initHostHint(host *Clients) string {
	return "run `kubectl ks-mc init-host" + host.contextFlag() + "` first"
}

// Preflight checks both clusters without changing anything and reports all findings together.
// The state is nil when a side could not be read far enough to continue.
func (j *Join) Preflight(ctx context.Context) (*Preflight, *joinState) {
	p := &Preflight{}
	st := &joinState{}
	if err := manifests.ValidateClusterName(j.opts.Name); err != nil {
		p.Error("pass a valid --name", "%v", err)
	}
	hostOK := j.hostPreflight(ctx, p, st)
	memberOK := j.memberPreflight(ctx, p, st)
	if hostOK && memberOK {
		j.crossPreflight(ctx, p, st)
	}
	if p.HasErrors() {
		return p, nil
	}
	return p, st
}

func (j *Join) hostPreflight(ctx context.Context, p *Preflight, st *joinState) bool {
	h := side(j.host, "host")
	ver, err := j.host.Kube.Discovery().ServerVersion()
	if err != nil {
		p.Error("check --host-context/--host-kubeconfig and that the API server is up", "%s: unreachable: %v", h, err)
		return false
	}
	p.OK("%s: reachable, Kubernetes %s", h, ver.GitVersion)
	cc, err := GetClusterConfiguration(ctx, j.host)
	if err != nil {
		if errors.Is(err, ErrKubeSphereNotInstalled) {
			p.Error(InstallKubeSphereHint, "%s: KubeSphere is not installed (no %s)", h, ccObject)
		} else {
			p.Error("", "%s: %v", h, err)
		}
		return false
	}
	st.hostCC = cc
	hint := initHostHint(j.host)
	ok := true
	if role := cc.ClusterRole(); role != RoleHost {
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
	// Proxy address: KubeSphere's own rule (proxyPublishAddress, else the tower Service's LB).
	addr := HostProxyAddress(ctx, j.host, cc, cfg)
	if addr == "" {
		p.Error(hint+" (with --proxy-publish-address when the tower Service has no external address)",
			"%s: no proxy address: multicluster.proxyPublishAddress is unset and Service %s/%s has no load balancer address", h, KubeSphereNamespace, TowerName)
		return false
	}
	if norm, err := ValidateProxyAddress(addr); err != nil {
		p.Error(hint, "%s: %v", h, err)
		return false
	} else {
		addr = norm
	}
	st.proxyAddress = addr
	p.OK("%s: KubeSphere %s host, multicluster enabled, proxy address %s", h, cc.Version(), addr)
	// Tunnel.
	tower, err := j.host.Kube.AppsV1().Deployments(KubeSphereNamespace).Get(ctx, TowerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		p.Error(hint, "%s: Deployment %s/%s (the proxy) does not exist", h, KubeSphereNamespace, TowerName)
		return false
	case err != nil:
		p.Error("", "%s: get deployment %s/%s: %v", h, KubeSphereNamespace, TowerName, err)
		return false
	}
	hostTunnel := manifests.TunnelTower
	if TunnelOf(tower) == TunnelKsMc {
		hostTunnel = manifests.TunnelKSMC
	}
	st.tunnel = j.opts.Tunnel
	if st.tunnel == manifests.TunnelAuto {
		st.tunnel = hostTunnel
	}
	if st.tunnel != hostTunnel {
		p.Error(fmt.Sprintf("use --tunnel=%s (or --tunnel=auto)", hostTunnel),
			"%s: the host runs the %s proxy, but --tunnel=%s was asked for: that agent cannot talk to it", h, hostTunnel, st.tunnel)
		return false
	}
	if ready, why := DeploymentRolledOut(tower); !ready {
		p.Warn("check: kubectl -n kubesphere-system get pods -l app=tower"+j.host.contextFlag(), "%s: the proxy (deployment tower) is not available yet: %s", h, why)
	}
	st.agentImage = j.opts.AgentImage
	if st.agentImage == "" && st.tunnel == manifests.TunnelTower {
		st.agentImage = cfg.Multicluster.AgentImage
	}
	if err := PlaintextAgentRefused(st.tunnel, addr, tower); err != nil {
		p.Error(PlaintextAgentAdvice(j.host, addr), "%s: %v", h, err)
		return false
	}
	st.caHash = j.opts.CACertHash
	if st.tunnel == manifests.TunnelKSMC && strings.HasPrefix(addr, "https://") && st.caHash == "" {
		pin, err := ProxyCACertHash(ctx, j.host)
		if err != nil {
			p.Error("pass --ca-cert-hash=sha256:… (the annotation ks-mc.io/ca-cert-hash of that Secret)", "%s: the proxy address is https but its CA cannot be pinned: %v", h, err)
			return false
		}
		st.caHash = pin
		p.OK("%s: proxy CA pinned (%s)", h, pin)
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
	ver, err := j.member.Kube.Discovery().ServerVersion()
	if err != nil {
		p.Error("check --context/--kubeconfig and that the API server is up", "%s: unreachable: %v", m, err)
		return false
	}
	p.OK("%s: reachable, Kubernetes %s", m, ver.GitVersion)
	uid, err := KubeSystemUID(ctx, j.member)
	if err != nil {
		p.Error("", "%s: %v", m, err)
		return false
	}
	st.memberUID = uid
	cc, err := GetClusterConfiguration(ctx, j.member)
	if err != nil {
		if errors.Is(err, ErrKubeSphereNotInstalled) {
			p.Error(InstallKubeSphereHint, "%s: KubeSphere is not installed (no %s)", m, ccObject)
		} else {
			p.Error("", "%s: %v", m, err)
		}
		return false
	}
	st.memberCC = cc
	switch role := cc.ClusterRole(); role {
	case RoleHost:
		p.Error("join another cluster, or pick the right --context", "%s: it is a KubeSphere host (clusterRole host): a host cannot join another host", m)
		return false
	case RoleMember:
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
	st.agentName = manifests.AgentName
	if agent != nil && agent.Name == manifests.MigratedAgentName {
		st.agentName = manifests.MigratedAgentName
	}
	return true
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

func (j *Join) crossPreflight(ctx context.Context, p *Preflight, st *joinState) {
	h, m := side(j.host, "host"), side(j.member, "member")
	name := j.opts.Name
	// Versions.
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
	// Clock skew.
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
	// Identity.
	if st.memberUID == st.hostUID {
		p.Error("pass the member's context with --context", "%s and %s are the same cluster (kube-system UID %s)", m, h, st.memberUID)
		return
	}
	clusters, err := ListClusters(ctx, j.host)
	if err != nil {
		p.Error("", "%s: %v", h, err)
		return
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
			return
		}
	}
	if c := st.existing; c != nil {
		uid := ClusterMemberUID(c)
		switch {
		case IsHostCluster(c):
			p.Error("choose another --name", "Cluster %q on the host is the host itself", name)
			return
		case uid == st.memberUID:
			p.OK("Cluster %q exists for this member: re-run, it is adopted", name)
		case uid == "":
			p.Error("choose another --name, or delete that Cluster on the host if it is a leftover (kubectl delete cluster "+name+j.host.contextFlag()+")",
				"Cluster %q exists on the host but is not linked to any member yet (no status.uid); it may be waiting for another cluster's agent", name)
			return
		default:
			p.Error("choose another --name", "Cluster %q on the host belongs to another cluster (kube-system UID %s, this member's is %s)", name, uid, st.memberUID)
			return
		}
	} else {
		p.OK("Cluster %q: will be created on the host", name)
	}
	// A leftover agent.
	if st.agent != nil {
		info := InspectAgent(st.agent)
		switch {
		case info.ProxyServer != "" && !sameProxy(info.ProxyServer, st.proxyAddress):
			p.Error(fmt.Sprintf("unjoin it from that host first, or delete it: kubectl -n %s delete deployment %s%s", manifests.AgentNamespace, manifests.AgentName, j.member.contextFlag()),
				"%s: Deployment %s/%s connects to another proxy (%s): is the member joined to another host?", m, manifests.AgentNamespace, manifests.AgentName, info.ProxyServer)
		case st.existing == nil:
			p.Warn("", "%s: a leftover Deployment %s/%s (cluster %q) will be replaced", m, manifests.AgentNamespace, manifests.AgentName, info.ClusterName)
		case info.ClusterName != "" && info.ClusterName != name:
			p.Warn("", "%s: Deployment %s/%s serves cluster %q; it will be replaced to serve %q", m, manifests.AgentNamespace, manifests.AgentName, info.ClusterName, name)
		default:
			p.OK("%s: agent Deployment exists (%s tunnel)", m, info.Tunnel)
		}
	}
}

// Run performs the join: preflight, member settings, Cluster, agent, wait for Ready. Errors never
// carry the jwtSecret or the agent token, even when an API error quotes a value.
func (j *Join) Run(ctx context.Context) (*JoinResult, error) {
	res, err := j.run(ctx)
	if err != nil {
		if msg := manifests.Scrub(err.Error(), j.secrets()...); msg != err.Error() {
			err = errors.New(msg)
		}
	}
	return res, err
}

func (j *Join) secrets() []string {
	out := []string{j.jwt.Reveal()}
	if j.token != "" && j.token != pendingToken {
		out = append(out, j.token)
	}
	return out
}

func (j *Join) run(ctx context.Context) (*JoinResult, error) {
	j.deadline = time.Now().Add(j.opts.Timeout)
	j.result = &JoinResult{Name: j.opts.Name, HostContext: j.host.Context, Context: j.member.Context, Changes: []Change{}}
	if j.opts.DryRun.Enabled() {
		j.result.DryRun = j.opts.DryRun
	}
	p, st := j.Preflight(ctx)
	if j.opts.OnPreflight != nil {
		j.opts.OnPreflight(p)
	}
	if err := p.Err(); err != nil {
		return j.result, err
	}
	r := j.result
	r.Tunnel, r.ProxyAddress, r.MemberUID = st.tunnel, st.proxyAddress, st.memberUID
	r.Adopted = st.existing != nil

	if err := j.memberSettings(ctx, st); err != nil {
		return r, err
	}
	cluster, err := j.applyCluster(ctx, st)
	if err != nil {
		return r, err
	}
	token, err := j.waitToken(ctx, cluster)
	if err != nil {
		return r, err
	}
	j.token = token
	if err := j.applyAgent(ctx, st, token); err != nil {
		return r, err
	}
	if j.opts.DryRun.Enabled() {
		r.Changed = len(r.Changes) > 0
		return r, nil
	}
	if err := j.waitConnected(ctx, st, token); err != nil {
		return r, err
	}
	r.Changed = len(r.Changes) > 0
	return r, nil
}

func (j *Join) remaining() time.Duration {
	d := time.Until(j.deadline)
	if d < time.Second {
		d = time.Second
	}
	return d
}

func (j *Join) change(obj, action, summary string, patch map[string]any) {
	j.result.Changes = append(j.result.Changes, Change{Object: obj, Action: action, Summary: summary, Patch: patch})
	verb := action
	if j.opts.DryRun.Enabled() {
		verb = "would " + action
	}
	j.rep.Step(fmt.Sprintf("%s %s: %s", verb, obj, summary))
}

// MemberPatch builds the member's ClusterConfiguration merge patch: the host's jwtSecret,
// clusterRole member and accessTokenMaxAge 0. Values already in place are left out.
func MemberPatch(cc *ClusterConfiguration, jwt Secret) MergePatch {
	p := MergePatch{}
	p.SetIfDifferent(cc.Object.Object, jwt.Reveal(), "spec", "authentication", "jwtSecret")
	p.SetIfDifferent(cc.Object.Object, RoleMember, "spec", "multicluster", "clusterRole")
	p.SetIfDifferent(cc.Object.Object, int64(0), "spec", "authentication", "oauthOptions", "accessTokenMaxAge")
	return p
}

var jwtPath = []string{"spec", "authentication", "jwtSecret"}

func describeMemberPatch(p MergePatch) string {
	var parts []string
	if _, ok := p.Get(jwtPath...); ok {
		parts = append(parts, "authentication.jwtSecret (the host's, "+RedactedValue+")")
	}
	if v, ok := p.Get("spec", "multicluster", "clusterRole"); ok {
		parts = append(parts, fmt.Sprintf("multicluster.clusterRole: %v", v))
	}
	if _, ok := p.Get("spec", "authentication", "oauthOptions", "accessTokenMaxAge"); ok {
		parts = append(parts, "authentication.oauthOptions.accessTokenMaxAge: 0")
	}
	return "set " + strings.Join(parts, ", ")
}

// memberConfigDone reports whether the member's kubesphere-config carries the join settings.
func (j *Join) memberConfigDone(cfg *KubeSphereConfig) (bool, string) {
	var missing []string
	if cfg.Authentication.JWTSecret != j.jwt {
		missing = append(missing, "jwtSecret differs from the host's")
	}
	if cfg.Multicluster.ClusterRole != RoleMember {
		missing = append(missing, fmt.Sprintf("clusterRole is %q", cfg.Multicluster.ClusterRole))
	}
	if d, err := cfg.AccessTokenMaxAgeDuration(); err != nil || d != 0 {
		missing = append(missing, "accessTokenMaxAge is not 0")
	}
	if len(missing) == 0 {
		return true, "settings applied"
	}
	return false, "kubesphere-config: " + strings.Join(missing, ", ")
}

func (j *Join) memberSettings(ctx context.Context, st *joinState) error {
	patch := MemberPatch(st.memberCC, j.jwt)
	done, _ := j.memberConfigDone(st.memberCfg)
	if patch.Empty() && done {
		j.rep.Step("member settings: jwtSecret, clusterRole member and accessTokenMaxAge 0 already in place")
	}
	since := time.Now()
	if !patch.Empty() {
		redacted := patch.Redacted(jwtPath)
		j.change(side(j.member, "member")+" "+ccObject, "patch", describeMemberPatch(patch), redacted)
		j.result.MemberObjects = append(j.result.MemberObjects, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": ClusterConfigurationGVR.GroupVersion().String(), "kind": "ClusterConfiguration",
			"metadata": map[string]any{"name": ClusterConfigurationName, "namespace": KubeSphereNamespace},
			"spec":     redacted["spec"],
		}})
		if j.opts.DryRun == DryRunClient {
			j.result.Pending = append(j.result.Pending, "the member's ks-installer run and a ks-apiserver restart")
			return nil
		}
		if _, err := PatchClusterConfiguration(ctx, j.member, patch, j.opts.DryRun); err != nil {
			return fmt.Errorf("member: %w", err)
		}
		if j.opts.DryRun.Enabled() {
			j.result.Pending = append(j.result.Pending, "the member's ks-installer run and a ks-apiserver restart")
			return nil
		}
	} else if !done {
		since = LastUpdateBy(st.memberCC.Object, FieldManager)
	}
	if j.opts.DryRun.Enabled() {
		return nil
	}
	if !done || !patch.Empty() {
		err := WaitForInstaller(ctx, j.member, WaitOptions{
			What: "the member settings", Timeout: j.remaining(), Since: since, Interval: j.opts.PollInterval,
			Done: func(ctx context.Context) (bool, string, error) {
				cfg, err := GetKubeSphereConfig(ctx, j.member)
				if err != nil {
					return false, "", err
				}
				ok, obs := j.memberConfigDone(cfg)
				return ok, obs, nil
			},
		}, j.rep)
		if err != nil {
			return fmt.Errorf("member: %w", err)
		}
		j.rep.Step("member: ks-installer applied the settings")
	}
	cc, err := GetClusterConfiguration(ctx, j.member)
	if err != nil {
		return fmt.Errorf("member: %w", err)
	}
	need, why, err := NeedsAPIServerRestart(ctx, j.member, cc)
	if err != nil {
		return fmt.Errorf("member: %w", err)
	}
	if need {
		if _, err := RestartDeployment(ctx, j.member, KubeSphereNamespace, APIServerName, j.opts.DryRun); err != nil {
			return fmt.Errorf("member: %w", err)
		}
		j.change(side(j.member, "member")+" deployment "+KubeSphereNamespace+"/"+APIServerName, "restart", why, nil)
		if err := WaitForRollout(ctx, j.member, KubeSphereNamespace, APIServerName, j.remaining(), j.rep); err != nil {
			return fmt.Errorf("member: %w", err)
		}
	}
	return nil
}

// clusterValues renders the desired Cluster.
func (j *Join) renderCluster(st *joinState) (*unstructured.Unstructured, error) {
	v := manifests.ClusterValues{
		Name: j.opts.Name, Provider: j.opts.Provider, Description: j.opts.Description, Group: j.opts.Group,
		Region: j.opts.Region, MemberUID: st.memberUID, Labels: j.opts.Labels,
	}
	if st.tunnel == manifests.TunnelKSMC {
		// The proxy then never serves a Tower agent for this Cluster (downgrade protection).
		v.Annotations = map[string]string{manifests.AgentProtocolAnnotation: manifests.AgentProtocolKsMc}
	}
	return manifests.RenderCluster(v)
}

// subsetOf reports whether every field of want is present with the same value in have.
func subsetOf(want, have any) bool {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return false
		}
		for k, v := range w {
			if !subsetOf(v, h[k]) {
				return false
			}
		}
		return true
	default:
		return sameValue(want, have)
	}
}

func (j *Join) applyCluster(ctx context.Context, st *joinState) (*unstructured.Unstructured, error) {
	want, err := j.renderCluster(st)
	if err != nil {
		return nil, err
	}
	obj := "host Cluster " + j.opts.Name
	if j.host.Context != "" {
		obj = side(j.host, "host") + " Cluster " + j.opts.Name
	}
	j.result.HostObjects = append(j.result.HostObjects, manifests.RedactObject(want))
	if st.existing != nil {
		wantMeta := map[string]any{"labels": want.Object["metadata"].(map[string]any)["labels"]}
		// The member UID annotation is only written on create; the rest must match.
		ann := map[string]any{}
		for k, v := range want.GetAnnotations() {
			if k != manifests.MemberUIDAnnotation && k != manifests.CreatorAnnotation {
				ann[k] = v
			}
		}
		wantMeta["annotations"] = ann
		if subsetOf(want.Object["spec"], st.existing.Object["spec"]) && subsetOf(wantMeta, st.existing.Object["metadata"]) {
			j.rep.Step(fmt.Sprintf("%s: exists for this member, nothing to change", obj))
			return st.existing, nil
		}
		// Keep ownership limited to what differs: never rewrite the creator or UID annotations.
		md := want.Object["metadata"].(map[string]any)
		md["annotations"] = ann
		if len(ann) == 0 {
			delete(md, "annotations")
		}
	}
	action, summary := "create", "agent connection (proxy), joinFederation"
	if st.existing != nil {
		action, summary = "update", "labels/annotations/spec from the flags"
	}
	j.change(obj, action, summary, nil)
	if j.opts.DryRun == DryRunClient {
		if st.existing != nil {
			return st.existing, nil
		}
		return want, nil
	}
	got, err := j.host.Dynamic.Resource(manifests.ClusterGVR).Apply(ctx, j.opts.Name, want,
		metav1.ApplyOptions{FieldManager: FieldManager, Force: true, DryRun: j.opts.DryRun.apiDryRun()})
	if err != nil {
		return nil, fmt.Errorf("apply Cluster %s on the host: %w", j.opts.Name, err)
	}
	return got, nil
}

const pendingToken = "<assigned by the host's proxy>"

func (j *Join) waitToken(ctx context.Context, cluster *unstructured.Unstructured) (string, error) {
	token, _, _ := unstructured.NestedString(cluster.Object, "spec", "connection", "token")
	if token != "" {
		return token, nil
	}
	if j.opts.DryRun.Enabled() {
		j.result.Pending = append(j.result.Pending, "the agent token (the host's proxy assigns it to the new Cluster)")
		return pendingToken, nil
	}
	var observed string
	for {
		c, err := GetCluster(ctx, j.host, j.opts.Name)
		switch {
		case err != nil:
			observed = err.Error()
		case c == nil:
			observed = "the Cluster disappeared"
		default:
			token, _, _ = unstructured.NestedString(c.Object, "spec", "connection", "token")
			if token != "" {
				j.rep.Step("host: the proxy assigned the agent token")
				return token, nil
			}
			observed = DescribeConditions(ClusterConditions(c))
		}
		j.rep.Progress(fmt.Sprintf("waiting for the host's proxy to assign a token to Cluster %s: %s", j.opts.Name, observed))
		if time.Now().After(j.deadline) {
			return "", fmt.Errorf("timed out after %s waiting for the host's proxy to fill spec.connection.token of Cluster %s (last seen: %s)\n"+
				"is the proxy running? kubectl -n %s get deployment %s%s; kubectl -n %s logs deployment/%s%s",
				j.opts.Timeout, j.opts.Name, observed, KubeSphereNamespace, TowerName, j.host.contextFlag(), KubeSphereNamespace, TowerName, j.host.contextFlag())
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(j.opts.PollInterval):
		}
	}
}

func (j *Join) applyAgent(ctx context.Context, st *joinState, token string) error {
	objs, err := manifests.RenderAgent(st.tunnel, manifests.AgentValues{
		ClusterName: j.opts.Name, Token: token, ProxyServer: st.proxyAddress, Image: st.agentImage, CACertHash: st.caHash,
		DeploymentName: agentNameFor(st),
	})
	if err != nil {
		return err
	}
	j.result.MemberObjects = append(j.result.MemberObjects, manifests.Redact(objs)...)
	m := side(j.member, "member")
	// Switching tunnels: the old Deployment's command/args belong to another manager; replace it.
	if st.agent != nil && InspectAgent(st.agent).Tunnel != st.tunnel {
		j.change(fmt.Sprintf("%s deployment %s/%s", m, manifests.AgentNamespace, st.agent.Name), "delete",
			fmt.Sprintf("replace the %s agent by the %s agent", InspectAgent(st.agent).Tunnel, st.tunnel), nil)
		if j.opts.DryRun != DryRunClient {
			err := j.member.Kube.AppsV1().Deployments(manifests.AgentNamespace).Delete(ctx, st.agent.Name,
				metav1.DeleteOptions{DryRun: j.opts.DryRun.apiDryRun()})
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("member: delete deployment %s/%s: %w", manifests.AgentNamespace, st.agent.Name, err)
			}
		}
		st.agent = nil
		st.agentName = manifests.AgentName
	}
	for _, o := range objs {
		obj := fmt.Sprintf("%s %s %s/%s", m, strings.ToLower(o.GetKind()), o.GetNamespace(), o.GetName())
		if j.opts.DryRun == DryRunClient {
			j.change(obj, "apply", "server-side apply (field manager ks-mc)", nil)
			continue
		}
		action, err := applyMemberObject(ctx, j.member, o, j.opts.DryRun)
		if err != nil {
			// The error of an apply can quote the object (and so the token): never pass it on verbatim.
			return fmt.Errorf("member: apply %s %s/%s: %s", o.GetKind(), o.GetNamespace(), o.GetName(), manifests.Scrub(apiReason(err), token))
		}
		if action == "" {
			j.rep.Step(obj + ": unchanged")
			continue
		}
		j.change(obj, action, "server-side apply (field manager ks-mc)", nil)
	}
	if st.tunnel == manifests.TunnelTower {
		// A token Secret left by an earlier bundled agent is no longer used.
		sec, err := j.member.Kube.CoreV1().Secrets(manifests.AgentNamespace).Get(ctx, manifests.AgentTokenSecretName, metav1.GetOptions{})
		if err == nil && sec.Labels[manifests.ManagedByLabel] == manifests.ManagedByValue {
			j.change(fmt.Sprintf("%s secret %s/%s", m, manifests.AgentNamespace, manifests.AgentTokenSecretName), "delete", "no longer used by the Tower agent", nil)
			if j.opts.DryRun != DryRunClient {
				_ = j.member.Kube.CoreV1().Secrets(manifests.AgentNamespace).Delete(ctx, manifests.AgentTokenSecretName, metav1.DeleteOptions{DryRun: j.opts.DryRun.apiDryRun()})
			}
		}
	}
	if j.opts.DryRun.Enabled() {
		return nil
	}
	if err := WaitForRollout(ctx, j.member, manifests.AgentNamespace, agentNameFor(st), j.remaining(), j.rep); err != nil {
		return fmt.Errorf("member: %w", err)
	}
	j.rep.Step(fmt.Sprintf("%s: agent rolled out", m))
	return nil
}

// agentNameFor is the agent Deployment join renders (manifests.AgentName unless migrated).
func agentNameFor(st *joinState) string {
	if st.tunnel == manifests.TunnelKSMC && st.agentName != "" {
		return st.agentName
	}
	return manifests.AgentName
}

// applyMemberObject server-side applies a rendered Secret or Deployment (field manager ks-mc,
// forced) and says whether it was created, updated or left unchanged ("").
func applyMemberObject(ctx context.Context, c *Clients, o *unstructured.Unstructured, dry DryRun) (string, error) {
	data, err := o.MarshalJSON()
	if err != nil {
		return "", err
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: &force, DryRun: dry.apiDryRun()}
	ns, name := o.GetNamespace(), o.GetName()
	var before, after metav1.Object
	switch o.GetKind() {
	case "Secret":
		cur, err := c.Kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return "", err
		}
		if err == nil {
			before = cur
		}
		got, err := c.Kube.CoreV1().Secrets(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
		if err != nil {
			return "", err
		}
		after = got
	case "Deployment":
		cur, err := c.Kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return "", err
		}
		if err == nil {
			before = cur
		}
		got, err := c.Kube.AppsV1().Deployments(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
		if err != nil {
			return "", err
		}
		after = got
	default:
		return "", fmt.Errorf("unexpected kind %s", o.GetKind())
	}
	switch {
	case before == nil:
		return "create", nil
	case before.GetResourceVersion() != after.GetResourceVersion():
		return "update", nil
	}
	return "", nil
}

// apiReason returns the message of an API error without the object it may echo.
func apiReason(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		return fmt.Sprintf("%s (%d)", s.Reason, s.Code)
	}
	return err.Error()
}

// ConnectTimeoutError explains a join that did not become Ready in time.
type ConnectTimeoutError struct {
	Name       string
	Timeout    time.Duration
	Conditions []ClusterCondition
	// Agent describes the agent pods; Logs are the last agent log lines (secrets scrubbed).
	Agent []string
	Logs  []string
	// Cause is the likeliest cause, in words, with what to check.
	Cause string
}

func (e *ConnectTimeoutError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "timed out after %s waiting for Cluster %s to become Ready\n", e.Timeout, e.Name)
	fmt.Fprintf(&b, "conditions: %s\n", DescribeConditions(e.Conditions))
	for _, a := range e.Agent {
		fmt.Fprintf(&b, "agent pod: %s\n", a)
	}
	if len(e.Logs) > 0 {
		b.WriteString("last agent log lines:\n")
		for _, l := range e.Logs {
			b.WriteString("  " + l + "\n")
		}
	}
	b.WriteString("likeliest cause: " + e.Cause)
	return b.String()
}

func (j *Join) waitConnected(ctx context.Context, st *joinState, token string) error {
	var conds []ClusterCondition
	phase := ConditionAgentAvailable
	for {
		c, err := GetCluster(ctx, j.host, j.opts.Name)
		observed := ""
		switch {
		case err != nil:
			observed = err.Error()
		case c == nil:
			return fmt.Errorf("cluster %s was deleted on the host while waiting for it to connect", j.opts.Name)
		default:
			conds = ClusterConditions(c)
			j.result.Conditions = conds
			if conditionTrue(conds, ConditionAgentAvailable) && phase == ConditionAgentAvailable {
				j.rep.Step("host: the agent connected to the proxy (AgentAvailable=True)")
				phase = ConditionReady
			}
			if phase == ConditionReady && conditionTrue(conds, ConditionReady) {
				j.rep.Step(fmt.Sprintf("host: Cluster %s is Ready", j.opts.Name))
				return nil
			}
			observed = DescribeConditions(conds)
		}
		what := "the agent to connect (AgentAvailable)"
		if phase == ConditionReady {
			what = "KubeSphere to reach the member (Ready)"
		}
		j.rep.Progress(fmt.Sprintf("waiting for %s: %s (%s left)", what, observed, max(time.Until(j.deadline).Round(time.Second), 0)))
		if time.Now().After(j.deadline) {
			return j.diagnose(ctx, st, conds, token)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(j.opts.PollInterval):
		}
	}
}

// diagnose gathers what a timed-out join saw and guesses the cause.
func (j *Join) diagnose(ctx context.Context, st *joinState, conds []ClusterCondition, token string) error {
	e := &ConnectTimeoutError{Name: j.opts.Name, Timeout: j.opts.Timeout, Conditions: conds}
	scrub := func(s string) string { return manifests.Scrub(s, token, j.jwt.Reveal()) }
	sel := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: manifests.AgentSelectorFor(agentNameFor(st))})
	pods, err := j.member.Kube.CoreV1().Pods(manifests.AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	var notRunning string
	if err != nil {
		e.Agent = append(e.Agent, "cannot list: "+scrub(err.Error()))
	} else if len(pods.Items) == 0 {
		e.Agent = append(e.Agent, "none found")
		notRunning = "no agent pod exists on the member"
	}
	var logText string
	if pods != nil && len(pods.Items) > 0 {
		pod := newestPod(pods.Items)
		e.Agent = append(e.Agent, describePod(pod))
		if pod.Status.Phase != corev1.PodRunning {
			notRunning = "the agent pod is " + string(pod.Status.Phase)
		}
		tail := int64(15)
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		raw, err := j.member.Kube.CoreV1().Pods(manifests.AgentNamespace).GetLogs(pod.Name, &corev1.PodLogOptions{TailLines: &tail}).Do(lctx).Raw()
		cancel()
		if err == nil {
			logText = scrub(string(raw))
			for _, l := range strings.Split(strings.TrimRight(logText, "\n"), "\n") {
				if l != "" {
					e.Logs = append(e.Logs, l)
				}
			}
		} else {
			e.Logs = append(e.Logs, "(logs unavailable: "+scrub(apiReason(err))+")")
		}
	}
	e.Cause = likelyCause(conds, notRunning, logText, st.proxyAddress, j.host.contextFlag(), j.member.contextFlag())
	return e
}

// likelyCause maps what was observed to the most probable reason a member did not connect.
func likelyCause(conds []ClusterCondition, notRunning, logs, proxy, hostFlag, memberFlag string) string {
	l := strings.ToLower(logs)
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(l, s) {
				return true
			}
		}
		return false
	}
	switch {
	case notRunning != "":
		return notRunning + ": check kubectl -n kubesphere-system describe pods -l app=agent" + memberFlag
	case conditionTrue(conds, ConditionAgentAvailable):
		msg := ""
		if c := FindCondition(conds, ConditionReady); c != nil && c.Message != "" {
			msg = " (" + c.Message + ")"
		}
		return "the agent is connected but KubeSphere cannot reach the member through the tunnel" + msg +
			": check ks-controller-manager's logs on the host (kubectl -n kubesphere-system logs deployment/ks-controller-manager" + hostFlag + ")"
	case has("ca-cert-hash", "certificate", "x509"):
		return "the proxy's TLS certificate does not match the pinned CA hash: re-run join so the current pin is used"
	case has("401", "403", "unauthorized", "forbidden", "token"):
		return "token mismatch: the agent's token is not the one in the host's Cluster spec.connection.token; re-run join to re-render the agent"
	case has("connection refused", "i/o timeout", "no route to host", "no such host", "deadline exceeded", "timeout", "eof", "bad handshake"):
		return "the proxy address " + proxy + " is not reachable from the member (firewall, NodePort, load balancer, or an L7 proxy dropping the Upgrade header): " +
			"check it from a member node with curl " + proxy + "/health; fix it with kubectl ks-mc init-host --proxy-publish-address" + hostFlag
	case FindCondition(conds, ConditionInitialized) == nil && FindCondition(conds, ConditionAgentAvailable) == nil:
		return "the host's proxy has not picked up the Cluster (no Initialized condition): check kubectl -n kubesphere-system logs deployment/tower" + hostFlag
	default:
		return "the agent has not connected to the proxy at " + proxy + ": most likely that address is unreachable from the member; check curl " + proxy + "/health from a member node and the agent's logs (kubectl -n kubesphere-system logs deployment/cluster-agent" + memberFlag + ")"
	}
}
