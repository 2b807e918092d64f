package installer

import (
	"context"
	"errors"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// ccObject names the ClusterConfiguration in results and messages.
var ccObject = "ClusterConfiguration " + kubesphere.Namespace + "/" + kubesphere.ClusterConfigurationName

// HostOptions configure InitHost.
type HostOptions struct {
	// ProxyPublishAddress, when set, is published (validated first); else an existing value is kept,
	// else the tower Service's load balancer address is used, else the AddressFunc is asked.
	ProxyPublishAddress string
	// Timeout bounds the whole run (installer runs and rollouts).
	Timeout time.Duration
	// NoRestart skips restarting ks-apiserver.
	NoRestart bool
	// Force allows a member cluster to become host and patching while ks-installer runs.
	Force  bool
	DryRun DryRun
	// Tunnel is kubesphere.TunnelTower, kubesphere.TunnelKsMc or "" (keep what runs; Tower on a fresh host).
	Tunnel kubesphere.Tunnel
	// Proxy renders the ks-mc proxy Deployment (Tunnel == kubesphere.TunnelKsMc).
	Proxy manifests.ProxyValues
	// AllowPlaintextAgents (Tunnel == kubesphere.TunnelKsMc) renders the proxy with --allow-plaintext-agents,
	// so that agents may reach it over an http:// address (their token then travels in clear text).
	// nil keeps what the running proxy does, so a re-run never cuts members off; without it an
	// http:// address is refused in preflight.
	AllowPlaintextAgents *bool
	// LoadBalancerWait is how long to wait for a freshly created tower Service to get a load balancer
	// address before asking for one (default 30s).
	LoadBalancerWait time.Duration
	// HealthTimeout bounds one GET /health probe (default 5s).
	HealthTimeout time.Duration
	// HealthWait is how long to retry /health after switching the tunnel (default 20s).
	HealthWait time.Duration
	// PollInterval between checks while waiting (default 2s).
	PollInterval time.Duration
}

// AddressRequest is what the AddressFunc gets when the proxy address needs an answer.
type AddressRequest struct {
	// Reason says why ("Service kubesphere-system/tower has no external address (<pending>)").
	Reason string
	// Candidates are likely reachable addresses (may be empty).
	Candidates []AddressCandidate
	// NodePort of the tower Service (0 when unknown).
	NodePort int32
	// Changed is true when this run already changed the cluster (the role was set): the answer
	// completes the set-up, a re-run with the flag does too.
	Changed bool
}

// AddressFunc supplies the proxy address: a prompt on a terminal, an error naming the flag
// otherwise. The returned value is validated with ValidateProxyAddress.
type AddressFunc func(ctx context.Context, req AddressRequest) (string, error)

// HostState is what preflight observed.
type HostState struct {
	CC          *ClusterConfiguration
	Config      *KubeSphereConfig
	Tower       *corev1.Service
	TowerDeploy *appsv1.Deployment
	// CurrentTunnel is what Deployment tower runs now ("" when absent).
	CurrentTunnel kubesphere.Tunnel
	Installer     InstallerState
	Drift         []string
	// Address is the validated --proxy-publish-address ("" when not given).
	Address string
	// PlaintextAgents: the proxy init-host renders accepts agents over plain http (the flag, or
	// kept from the running proxy).
	PlaintextAgents bool
}

// HostResult is the machine-readable outcome of init-host.
type HostResult struct {
	Context             string            `json:"context,omitempty"`
	ClusterRole         string            `json:"clusterRole"`
	KubeSphereVersion   string            `json:"kubesphereVersion,omitempty"`
	ProxyPublishAddress string            `json:"proxyPublishAddress,omitempty"`
	AddressSource       string            `json:"addressSource,omitempty"`
	Tunnel              kubesphere.Tunnel `json:"tunnel"`
	DryRun              DryRun            `json:"dryRun,omitempty"`
	Changed             bool              `json:"changed"`
	Changes             []Change          `json:"changes"`
	Verify              []Check           `json:"verify,omitempty"`
	// Pending lists what a dry run could not determine without applying.
	Pending []string `json:"pending,omitempty"`
}

// Host runs init-host against one cluster.
type Host struct {
	c    *Clients
	opts HostOptions
	rep  Reporter
	ask  AddressFunc

	deadline  time.Time
	result    *HostResult
	log       *ChangeLog
	ccChanged bool
	// tunnelSwitched: the proxy was rolled out by this run (verify waits for it to listen).
	tunnelSwitched bool
	// plaintext: render the proxy with --allow-plaintext-agents (HostState.PlaintextAgents).
	plaintext bool
}

// NewHost prepares an init-host run. ask may be nil (then a needed address is an error).
func NewHost(c *Clients, opts HostOptions, rep Reporter, ask AddressFunc) *Host {
	defaultDuration(&opts.Timeout, 15*time.Minute)
	defaultDuration(&opts.LoadBalancerWait, 30*time.Second)
	defaultDuration(&opts.HealthTimeout, 5*time.Second)
	defaultDuration(&opts.HealthWait, 20*time.Second)
	defaultDuration(&opts.PollInterval, 2*time.Second)
	if opts.DryRun == "" {
		opts.DryRun = DryRunNone
	}
	if ask == nil {
		ask = func(context.Context, AddressRequest) (string, error) {
			return "", errors.New("a proxy address is needed: pass --proxy-publish-address=" + ProxyAddressExample)
		}
	}
	return &Host{c: c, opts: opts, rep: reporterOrNop(rep), ask: ask}
}

// HostAccess is what init-host needs to be allowed to do.
func HostAccess(opts HostOptions) []Access {
	ns := kubesphere.Namespace
	wants := []Access{
		{Verb: "get", Group: kubesphere.ClusterConfigurationGVR.Group, Resource: kubesphere.ClusterConfigurationGVR.Resource, Namespace: ns, Name: kubesphere.ClusterConfigurationName},
		{Verb: "patch", Group: kubesphere.ClusterConfigurationGVR.Group, Resource: kubesphere.ClusterConfigurationGVR.Resource, Namespace: ns, Name: kubesphere.ClusterConfigurationName},
		{Verb: "get", Resource: "configmaps", Namespace: ns, Name: kubesphere.ConfigName},
		{Verb: "get", Resource: "services", Namespace: ns, Name: kubesphere.TowerName},
		{Verb: "get", Group: "apps", Resource: "deployments", Namespace: ns},
	}
	if !opts.NoRestart {
		wants = append(wants, Access{Verb: "patch", Group: "apps", Resource: "deployments", Namespace: ns, Name: kubesphere.APIServerName})
	}
	if opts.Tunnel == kubesphere.TunnelKsMc {
		wants = append(wants,
			Access{Verb: "update", Group: "apps", Resource: "deployments", Namespace: ns, Name: kubesphere.TowerName},
			Access{Verb: "patch", Group: "apps", Resource: "deployments", Namespace: ns, Name: kubesphere.TowerName})
	}
	return wants
}

// Preflight checks the cluster without changing anything. The plan's state is nil when the
// cluster or KubeSphere could not be read (its checks then hold the error); else it is what was
// observed, also when a check failed.
func (h *Host) Preflight(ctx context.Context) *Plan[*HostState] {
	plan := &Plan[*HostState]{}
	plan.State = h.preflight(ctx, plan.Findings())
	return plan
}

func (h *Host) preflight(ctx context.Context, p *Preflight) *HostState {
	ctxName := h.c.Context
	if ctxName == "" {
		ctxName = "(current context)"
	}
	sv, err := h.c.Kube.Discovery().ServerVersion()
	if err != nil {
		p.Error("check --context and --kubeconfig", "cluster of context %s is not reachable: %v", ctxName, err)
		return nil
	}
	p.OK("cluster of context %s is reachable (Kubernetes %s)", ctxName, sv.GitVersion)

	cc, err := GetClusterConfiguration(ctx, h.c)
	if errors.Is(err, ErrKubeSphereNotInstalled) {
		p.Error(InstallKubeSphereHint, "KubeSphere is not installed: %s not found", ccObject)
		return nil
	}
	if err != nil {
		p.Error("", "%v", err)
		return nil
	}
	st := &HostState{CC: cc}

	h.kubeSphereChecks(p, cc)

	if cfg, err := GetKubeSphereConfig(ctx, h.c); err != nil {
		p.Warn("", "cannot read kubesphere-config: %v", err)
	} else {
		st.Config = cfg
		st.Drift = ConfigDrift(cc, cfg)
	}

	st.Installer, _ = GetInstallerState(ctx, h.c, time.Time{})
	h.installerCheck(p, st)

	CheckAccessInto(ctx, p, h.c, HostAccess(h.opts))

	if svc, err := h.c.Kube.CoreV1().Services(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{}); err == nil {
		st.Tower = svc
	} else if !apierrors.IsNotFound(err) {
		p.Warn("", "cannot read Service %s/%s: %v", kubesphere.Namespace, kubesphere.TowerName, err)
	}
	if d, err := h.c.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{}); err == nil {
		st.TowerDeploy = d
		st.CurrentTunnel = TunnelOf(d)
	}
	h.addressCheck(p, st)
	h.tunnelCheck(p, st)
	h.towerMembersCheck(ctx, p, st)

	if !h.opts.NoRestart {
		if _, err := h.c.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.APIServerName, metav1.GetOptions{}); err != nil {
			p.Error("pass --no-restart to skip the restart", "cannot read deployment %s/%s to restart it: %v", kubesphere.Namespace, kubesphere.APIServerName, err)
		}
	}
	return st
}

// kubeSphereChecks: the KubeSphere version and state, and the cluster role (a member becomes host
// only with --force).
func (h *Host) kubeSphereChecks(p *Preflight, cc *ClusterConfiguration) {
	switch v := cc.Version(); {
	case v == "":
		p.Warn("wait until the KubeSphere installation finished", "KubeSphere version unknown (%s has no status.core.version)", ccObject)
	case strings.HasPrefix(v, "v3.") || strings.HasPrefix(v, "3."):
		p.OK("KubeSphere %s installed", v)
	default:
		p.Warn("ks-mc supports KubeSphere 3.x", "KubeSphere %s installed", v)
	}
	if s := cc.ComponentStatus("core"); s != "" && s != "enabled" {
		p.Warn("wait for the KubeSphere installation to finish", "KubeSphere core status is %q", s)
	}

	switch role := cc.ClusterRole(); role {
	case kubesphere.RoleHost:
		p.OK("cluster role: host already")
	case kubesphere.RoleNone:
		p.OK("cluster role: none, will become host")
	case kubesphere.RoleMember:
		msg := "cluster role is member: KubeSphere does not support switching a member to host (it uninstalls nothing and may leave the host's Cluster object pointing here)"
		if h.opts.Force {
			p.Warn("", "%s; continuing because of --force", msg)
		} else {
			p.Error("remove it from its host first (kubectl ks-mc unjoin), or pass --force to switch anyway", "%s", msg)
		}
	default:
		p.Error("fix spec.multicluster.clusterRole (host, member or none)", "unknown cluster role %q in %s", role, ccObject)
	}
}

// wantsHostSettings reports whether the CC already carries what init-host would set.
func (h *Host) wantsHostSettings(st *HostState) bool {
	if st.CC.ClusterRole() != kubesphere.RoleHost {
		return false
	}
	return st.Address == "" || st.Address == st.CC.ProxyPublishAddress()
}

func (h *Host) installerCheck(p *Preflight, st *HostState) {
	logs := InstallerLogsCommand(h.c.Context)
	running := st.Installer.Phase == InstallerRunning || (st.Installer.Phase == InstallerUnknown && len(st.Drift) > 0)
	switch {
	case st.Installer.Phase == InstallerFailed:
		p.Warn("see: "+logs, "the last ks-installer run failed at task %q", st.Installer.Task)
	case running && h.wantsHostSettings(st):
		p.OK("ks-installer is still applying the host settings (from an earlier run): init-host waits for it")
	case running:
		why := st.Installer.Describe()
		if len(st.Drift) > 0 {
			why = "kubesphere-config does not match the ClusterConfiguration yet: " + st.Drift[0]
		}
		if h.opts.Force {
			p.Warn("", "ks-installer appears to be running (%s); continuing because of --force", why)
		} else {
			p.Error("wait for it to finish ("+logs+" -f), then re-run; or pass --force", "ks-installer appears to be running (%s)", why)
		}
	default:
		p.OK("ks-installer is not running")
	}
}

func (h *Host) addressCheck(p *Preflight, st *HostState) {
	if h.opts.ProxyPublishAddress != "" {
		addr, err := ValidateProxyAddress(h.opts.ProxyPublishAddress)
		if err != nil {
			p.Error("fix --proxy-publish-address", "%v", err)
			return
		}
		st.Address = addr
		p.OK("proxy address %s (--proxy-publish-address)", addr)
		return
	}
	if cur := st.CC.ProxyPublishAddress(); cur != "" {
		if _, err := ValidateProxyAddress(cur); err != nil {
			p.Error("pass a valid --proxy-publish-address", "the published proxy address in %s is invalid: %v", ccObject, err)
			return
		}
		p.OK("proxy address %s (already published)", cur)
		return
	}
	switch {
	case st.Tower == nil:
		p.OK("Service %s/%s does not exist yet: ks-installer creates it, then its load balancer address is used or one is asked for (--proxy-publish-address)", kubesphere.Namespace, kubesphere.TowerName)
	case LoadBalancerAddress(st.Tower) != "" && h.opts.Tunnel == kubesphere.TunnelKsMc:
		p.OK("proxy address %s (load balancer of Service %s; https: the ks-mc proxy serves TLS on that port, so init-host publishes it)", httpsAddress(LoadBalancerAddress(st.Tower)), kubesphere.TowerName)
	case LoadBalancerAddress(st.Tower) != "":
		p.OK("proxy address %s (load balancer of Service %s)", LoadBalancerAddress(st.Tower), kubesphere.TowerName)
	default:
		example := ProxyAddressExample
		if h.opts.Tunnel == kubesphere.TunnelKsMc {
			example = httpsAddress(example)
		}
		p.Warn("pass --proxy-publish-address="+example+" or answer the prompt", "Service %s/%s has no external address (LoadBalancer <pending>)", kubesphere.Namespace, kubesphere.TowerName)
	}
}

func (h *Host) tunnelCheck(p *Preflight, st *HostState) {
	defer h.plaintextCheck(p, st)
	switch {
	case h.opts.Tunnel == kubesphere.TunnelKsMc:
		if err := h.opts.Proxy.Validate(); err != nil {
			p.Error("check --proxy-image", "%v", err)
			return
		}
		if st.CurrentTunnel == kubesphere.TunnelKsMc {
			p.OK("tunnel: Deployment tower runs the ks-mc proxy")
		} else {
			p.OK("tunnel: Deployment tower will run the ks-mc proxy (%s)", h.opts.Proxy.Image)
		}
	case h.opts.Tunnel == kubesphere.TunnelTower && st.CurrentTunnel == kubesphere.TunnelKsMc:
		p.Error("keep --tunnel=ks-mc (members joined through it would lose their connection)",
			"tunnel: Deployment tower runs the ks-mc proxy; switching back to KubeSphere's Tower is not supported by init-host")
	case st.CurrentTunnel == kubesphere.TunnelKsMc:
		p.OK("tunnel: Deployment tower runs the ks-mc proxy (kept)")
	default:
		p.OK("tunnel: KubeSphere's Tower")
	}
}

// towerMembersCheck: switching a host that runs KubeSphere's Tower to the ks-mc proxy keeps every
// member connected by a Tower agent: the ks-mc proxy serves Tower agents on the same port (plain
// http allowed for them: their Deployments dial the http:// address they were rendered with), so
// their requests fail at most while the proxy pod is replaced. They are listed, with the weaker
// security a Tower agent keeps, and migrate moves them to the ks-mc agent one by one.
func (h *Host) towerMembersCheck(ctx context.Context, p *Preflight, st *HostState) {
	// Only a host has members.
	if h.opts.Tunnel != kubesphere.TunnelKsMc || st.CurrentTunnel != kubesphere.TunnelTower || st.CC.ClusterRole() != kubesphere.RoleHost {
		return
	}
	clusters, err := ListClusters(ctx, h.c)
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		p.Warn("", "cannot list the members connected through Tower: %v", err)
		return
	}
	var names []string
	for i := range clusters {
		c := &clusters[i]
		typ, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "type")
		if IsHostCluster(c) || typ != "proxy" {
			continue
		}
		state := "agent disconnected"
		if conditionTrue(ClusterConditions(c), kubesphere.ConditionAgentAvailable) {
			state = "agent connected"
		}
		names = append(names, fmt.Sprintf("%s (%s)", c.GetName(), state))
	}
	if len(names) == 0 {
		return
	}
	p.Warn(fmt.Sprintf("then move them to the ks-mc agent one by one, without a failed request: kubectl ks-mc migrate --host-context %s --all-contexts (or --context <context of each member>)", hostContextName(h.c)),
		"%d member(s) connect through KubeSphere's Tower agents: %s; they stay connected through the ks-mc proxy, which serves Tower agents on the same port "+
			"(over plain http, as their Deployments dial it); their requests fail only while the proxy pod is replaced. "+
			"A Tower agent stays weaker: its token is in its command line and over ws:// the proxy is not authenticated",
		len(names), strings.Join(names, ", "))
}

func hostContextName(c *Clients) string {
	if c.Context != "" {
		return c.Context
	}
	return "<host context>"
}

// plaintextCheck: the ks-mc proxy serves TLS on its port and, unless rendered with
// --allow-plaintext-agents, refuses agents over plain http (a fake proxy on the path would get the
// token and act with the agent's identity). With --tunnel=ks-mc an http:// address is refused
// unless plaintext agents are allowed: by --allow-plaintext-agents, or kept from the running proxy
// when the flag is not given (a re-run never cuts members off). Without --tunnel the proxy is not
// re-rendered: an http:// address is only warned about.
func (h *Host) plaintextCheck(p *Preflight, st *HostState) {
	if h.opts.Tunnel != kubesphere.TunnelKsMc && st.CurrentTunnel != kubesphere.TunnelKsMc {
		return
	}
	addr := st.Address
	if addr == "" {
		addr = st.CC.ProxyPublishAddress()
	}
	if addr == "" && st.Tower != nil {
		addr = LoadBalancerAddress(st.Tower)
		if h.opts.Tunnel == kubesphere.TunnelKsMc {
			addr = httpsAddress(addr)
		}
	}
	plain := strings.HasPrefix(addr, "http://")
	live := st.CurrentTunnel == kubesphere.TunnelKsMc && manifests.ProxyAllowsPlaintextAgents(st.TowerDeploy)
	httpsFix := "publish --proxy-publish-address=" + httpsAddress(addr) + ": the ks-mc proxy serves TLS on the same port and join pins its CA"
	if h.opts.Tunnel != kubesphere.TunnelKsMc {
		st.PlaintextAgents = live
		if plain {
			p.Warn(httpsFix, "agents will reach the ks-mc proxy at %s without TLS", addr)
		}
		return
	}
	allowed, given := live, h.opts.AllowPlaintextAgents != nil
	if given {
		allowed = *h.opts.AllowPlaintextAgents
	}
	st.PlaintextAgents = allowed
	switch {
	case plain && !allowed:
		why := "the ks-mc proxy refuses agents over plain http (their token would travel in clear text)"
		if live {
			why = "--allow-plaintext-agents=false: the running proxy's plaintext agents would be cut off"
		}
		p.Error(httpsFix+" (members joined over http:// must then be re-joined); or pass --allow-plaintext-agents to accept agents over http://",
			"the proxy address is %s, but %s", addr, why)
	case plain:
		how := "--allow-plaintext-agents"
		if !given {
			how = "--allow-plaintext-agents kept from the running proxy"
		}
		p.Warn(httpsFix, "agents will reach the ks-mc proxy at %s without TLS: their token travels in clear text (%s)", addr, how)
	case allowed && !given:
		p.Warn("pass --allow-plaintext-agents=false to refuse them, once every member is joined over https",
			"the running ks-mc proxy accepts agents over plain http (--allow-plaintext-agents): kept")
	case live && !allowed:
		p.Warn("re-join members that connect over http:// (join then uses "+addr+" and pins the proxy CA)",
			"--allow-plaintext-agents=false: the ks-mc proxy will refuse agents that connect over plain http")
	}
}

// TunnelOf tells which tunnel a tower Deployment runs.
func TunnelOf(d *appsv1.Deployment) kubesphere.Tunnel {
	if d == nil {
		return ""
	}
	if manifests.IsProxyDeployment(d) {
		return kubesphere.TunnelKsMc
	}
	return kubesphere.TunnelTower
}

// HostTunnel reads Deployment kubesphere-system/tower and tells which tunnel the host runs
// (kubesphere.TunnelTower or kubesphere.TunnelKsMc); "" when there is no tower Deployment. For join's --tunnel=auto.
func HostTunnel(ctx context.Context, c *Clients) (kubesphere.Tunnel, error) {
	d, err := c.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get deployment %s/%s: %w", kubesphere.Namespace, kubesphere.TowerName, err)
	}
	return TunnelOf(d), nil
}
