package installer

import (
	"context"
	"errors"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"net/url"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// Run makes the cluster a host. st comes from a Preflight without errors. The order keeps every
// interruption resumable by a re-run: (1) settle the proxy address when it can be known before any
// change (flag, existing value, load balancer, or the AddressFunc for a pending Service); (2) one
// merge patch with clusterRole and the address; (3) wait for ks-installer; (4) if the address
// could only be known once the installer created Service tower, resolve it and patch again;
// (5) switch the tunnel; (6) restart ks-apiserver when ks-mc changed the ClusterConfiguration after
// its last restart (read from managedFields, so an interrupted run is finished by the next one);
// (7) verify. A plan with a failed check is refused (nothing is changed).
func (h *Host) Apply(ctx context.Context, plan *Plan[*HostState]) (*HostResult, error) {
	if err := plan.Err(); err != nil {
		return nil, err
	}
	st := plan.State
	if st == nil || st.CC == nil {
		return nil, errors.New("init-host: run preflight first")
	}
	h.deadline = time.Now().Add(h.opts.Timeout)
	res := h.start(st)

	// (1) The address, when it can be known now.
	addr, source, err := h.initialAddress(ctx, st)
	if err != nil {
		return res, err
	}
	res.ProxyPublishAddress, res.AddressSource = addr, source
	patchAddr := ""
	if source == AddressFromFlag || source == AddressFromAnswer || h.explicitLB(source) {
		patchAddr = addr
	}

	// (2) Role (and address) in one patch: one installer run.
	if err := h.patchCC(ctx, st.CC, patchAddr); err != nil {
		return res, err
	}
	if h.opts.DryRun.Enabled() {
		return h.dryRunRest(ctx, st, res)
	}

	// (3) Wait for the installer.
	if err := h.waitHost(ctx); err != nil {
		return res, err
	}

	// (4) Address from the Service the installer created.
	if res.ProxyPublishAddress == "" {
		if err := h.addressFromService(ctx, res); err != nil {
			return res, err
		}
	}

	// (5) Tunnel.
	if h.opts.Tunnel == kubesphere.TunnelKsMc {
		if err := h.switchTunnel(ctx); err != nil {
			return res, err
		}
	}

	// (6) ks-apiserver.
	if err := h.restartIfNeeded(ctx); err != nil {
		return res, err
	}

	// (7) Verify.
	h.verify(ctx, res)
	res.Changed = len(res.Changes) > 0
	return res, nil
}

// start makes the result and the change log of this run.
func (h *Host) start(st *HostState) *HostResult {
	res := &HostResult{
		Context: h.c.Context, ClusterRole: kubesphere.RoleHost, KubeSphereVersion: st.CC.Version(),
		Tunnel: st.CurrentTunnel, Changes: []Change{},
	}
	if h.opts.Tunnel != "" {
		res.Tunnel = h.opts.Tunnel
	}
	if res.Tunnel == "" {
		res.Tunnel = kubesphere.TunnelTower
	}
	if h.opts.DryRun.Enabled() {
		res.DryRun = h.opts.DryRun
	}
	h.result = res
	h.log = NewChangeLog(&res.Changes, h.opts.DryRun, nil)
	h.plaintext = st.PlaintextAgents
	return res
}

// addressFromService is step (4): the address once ks-installer created Service tower, published
// with a second patch when it has to be explicit.
func (h *Host) addressFromService(ctx context.Context, res *HostResult) error {
	addr, source, err := h.deferredAddress(ctx)
	if err != nil {
		return err
	}
	res.ProxyPublishAddress, res.AddressSource = addr, source
	if source == AddressFromAnswer || h.explicitLB(source) {
		cc, err := GetClusterConfiguration(ctx, h.c)
		if err != nil {
			return err
		}
		if err := h.patchCC(ctx, cc, addr); err != nil {
			return err
		}
		if err := h.waitHost(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (h *Host) remaining() time.Duration {
	if d := time.Until(h.deadline); d > 0 {
		return d
	}
	return time.Millisecond
}

func (h *Host) initialAddress(ctx context.Context, st *HostState) (string, string, error) {
	if st.Address != "" {
		return st.Address, AddressFromFlag, nil
	}
	if cur := st.CC.ProxyPublishAddress(); cur != "" {
		return cur, AddressFromExisting, nil
	}
	if st.Tower == nil {
		return "", "", nil // known once ks-installer created the Service
	}
	if lb := LoadBalancerAddress(st.Tower); lb != "" {
		return h.lbAddress(lb), AddressFromLoadBalancer, nil
	}
	addr, err := h.askAddress(ctx, st.Tower, false)
	return addr, AddressFromAnswer, err
}

func (h *Host) askAddress(ctx context.Context, svc *corev1.Service, changed bool) (string, error) {
	cands, err := AddressCandidates(ctx, h.c, svc)
	if err != nil {
		h.rep.Warn(fmt.Sprintf("cannot list nodes for address suggestions: %v", err))
	}
	if h.opts.Tunnel == kubesphere.TunnelKsMc {
		for i := range cands {
			cands[i].Address = httpsAddress(cands[i].Address)
		}
	}
	req := AddressRequest{
		Reason:     fmt.Sprintf("Service %s/%s has no external address (LoadBalancer <pending>)", kubesphere.Namespace, kubesphere.TowerName),
		Candidates: cands,
		Changed:    changed,
	}
	if len(svc.Spec.Ports) > 0 {
		req.NodePort = svc.Spec.Ports[0].NodePort
	}
	answer, err := h.ask(ctx, req)
	if err != nil {
		if changed {
			return "", fmt.Errorf("%w\n(clusterRole is host now; re-running init-host with --proxy-publish-address completes the set-up)", err)
		}
		return "", err
	}
	addr, err := ValidateProxyAddress(answer)
	if err != nil {
		return "", fmt.Errorf("--proxy-publish-address: %w", err)
	}
	if h.opts.Tunnel == kubesphere.TunnelKsMc && strings.HasPrefix(addr, "http://") && !h.plaintext {
		return "", fmt.Errorf("proxy address %s: the ks-mc proxy refuses agents over plain http: use %s (it serves TLS on the same port), or pass --allow-plaintext-agents", addr, httpsAddress(addr))
	}
	return addr, nil
}

func (h *Host) patchCC(ctx context.Context, cc *ClusterConfiguration, addr string) error {
	p := HostPatch(cc, addr)
	if p.Empty() {
		if addr == "" {
			h.rep.Step("clusterRole is host already: nothing to change in " + ccObject)
		} else {
			h.rep.Step("clusterRole and proxyPublishAddress already set: nothing to change in " + ccObject)
		}
		return nil
	}
	summary := describeHostPatch(p)
	if _, err := PatchClusterConfiguration(ctx, h.c, p, h.opts.DryRun); err != nil {
		return err
	}
	if !h.opts.DryRun.Enabled() {
		h.rep.Step(summary + " in " + ccObject)
	}
	h.ccChanged = true
	h.log.Record(Change{Object: ccObject, Action: "merge-patch", Summary: summary, Patch: p})
	return nil
}

// HostPatch builds the ClusterConfiguration merge patch for a host: clusterRole host and, when
// address is not empty, proxyPublishAddress. Fields that already hold the wanted value are left out,
// so an empty patch means nothing to change. Nothing else of the object is touched.
func HostPatch(cc *ClusterConfiguration, address string) MergePatch {
	p := MergePatch{}
	p.SetIfDifferent(cc.Object.Object, kubesphere.RoleHost, "spec", "multicluster", "clusterRole")
	if address != "" {
		p.SetIfDifferent(cc.Object.Object, address, "spec", "multicluster", "proxyPublishAddress")
	}
	return p
}

func describeHostPatch(p MergePatch) string {
	var parts []string
	if v, ok := p.Get("spec", "multicluster", "clusterRole"); ok {
		parts = append(parts, fmt.Sprintf("clusterRole: %v", v))
	}
	if v, ok := p.Get("spec", "multicluster", "proxyPublishAddress"); ok {
		parts = append(parts, fmt.Sprintf("proxyPublishAddress: %v", v))
	}
	return "set " + strings.Join(parts, ", ")
}

// HostReady is the wait condition of a host: status.multicluster.status enabled, kubesphere-config
// re-rendered from the current spec with multicluster.enable, and Deployment tower rolled out.
func HostReady(ctx context.Context, c *Clients) (bool, string, error) {
	cc, err := GetClusterConfiguration(ctx, c)
	if err != nil {
		return false, "", err
	}
	if s := cc.ComponentStatus("multicluster"); s != "enabled" {
		if s == "" {
			s = "unset"
		}
		return false, "status.multicluster.status is " + s, nil
	}
	cfg, err := GetKubeSphereConfig(ctx, c)
	if err != nil {
		return false, "", err
	}
	if d := ConfigDrift(cc, cfg); len(d) > 0 {
		return false, d[0], nil
	}
	if !cfg.Multicluster.Enable {
		return false, "kubesphere-config has multicluster.enable false", nil
	}
	d, err := c.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, "deployment tower not created yet", nil
	}
	if err != nil {
		return false, "", err
	}
	if ok, why := DeploymentRolledOut(d); !ok {
		return false, "deployment tower: " + why, nil
	}
	return true, "", nil
}

func (h *Host) waitHost(ctx context.Context) error {
	if ok, _, err := HostReady(ctx, h.c); err == nil && ok {
		h.rep.Step("ks-installer has applied the host settings; tower is running")
		return nil
	}
	since := time.Now().Add(-5 * time.Second)
	err := WaitForInstaller(ctx, h.c, WaitOptions{
		What: "the host settings", Timeout: h.opts.Timeout, Deadline: h.deadline, Since: since, Interval: h.opts.PollInterval,
		Done: func(ctx context.Context) (bool, string, error) { return HostReady(ctx, h.c) },
	}, h.rep)
	if err != nil {
		return err
	}
	h.rep.Step("ks-installer applied the host settings; tower is running")
	return nil
}

func (h *Host) deferredAddress(ctx context.Context) (string, string, error) {
	svcs := h.c.Kube.CoreV1().Services(kubesphere.Namespace)
	wait := min(h.opts.LoadBalancerWait, h.remaining())
	end := time.Now().Add(wait)
	for {
		svc, err := svcs.Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
		if err != nil {
			return "", "", fmt.Errorf("get service %s/%s: %w", kubesphere.Namespace, kubesphere.TowerName, err)
		}
		if lb := LoadBalancerAddress(svc); lb != "" {
			lb = h.lbAddress(lb)
			h.rep.Step("proxy address " + lb + " from the load balancer of Service tower")
			return lb, AddressFromLoadBalancer, nil
		}
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || time.Now().After(end) {
			addr, err := h.askAddress(ctx, svc, h.log.Changed())
			return addr, AddressFromAnswer, err
		}
		h.rep.Progress(fmt.Sprintf("waiting for a load balancer address on Service tower (%s left)", time.Until(end).Round(time.Second)))
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(min(time.Second, h.opts.PollInterval)):
		}
	}
}

// proxyValues are the proxy's values for this host: its serving certificate also names the
// published address's host, which agents dial.
func (h *Host) proxyValues() manifests.ProxyValues {
	v := h.opts.Proxy
	v.AllowPlaintextAgents = h.plaintext
	if u, err := url.Parse(h.result.ProxyPublishAddress); err == nil && u.Hostname() != "" {
		san := "--tls-san=" + u.Hostname()
		if !slices.Contains(v.ExtraArgs, san) {
			v.ExtraArgs = append(slices.Clone(v.ExtraArgs), san)
		}
	}
	return v
}

// lbAddress is the address derived from the tower Service's load balancer. KubeSphere derives
// http://<lb>:<port> (the agent YAML of the cluster handler, kubesphere pkg/kapis/cluster/v1alpha1);
// the ks-mc proxy serves TLS on that port and refuses plaintext agents, so with --tunnel=ks-mc it
// is https:// and published explicitly.
func (h *Host) lbAddress(lb string) string {
	if h.opts.Tunnel == kubesphere.TunnelKsMc {
		return httpsAddress(lb)
	}
	return lb
}

// explicitLB: a load balancer address that must be published explicitly (KubeSphere's own
// derivation would give http://, which the ks-mc proxy refuses).
func (h *Host) explicitLB(source string) bool {
	return source == AddressFromLoadBalancer && h.opts.Tunnel == kubesphere.TunnelKsMc
}

func (h *Host) switchTunnel(ctx context.Context) error {
	changed, d, err := EnsureProxyDeployment(ctx, h.c, h.proxyValues(), h.opts.DryRun)
	if err != nil {
		return err
	}
	obj := "Deployment " + kubesphere.Namespace + "/" + kubesphere.TowerName
	if !changed {
		h.rep.Step("tower already runs the ks-mc proxy")
	} else {
		h.tunnelSwitched = true
		h.log.Record(Change{Object: obj, Action: "update", Summary: "run the ks-mc proxy (" + h.opts.Proxy.Image + ")", Manifest: d})
		if !h.opts.DryRun.Enabled() {
			h.rep.Step("switched tower to the ks-mc proxy (" + h.opts.Proxy.Image + ")")
		}
	}
	if h.opts.DryRun.Enabled() {
		return nil
	}
	return WaitForRolloutUntil(ctx, h.c, kubesphere.Namespace, kubesphere.TowerName, h.deadline, h.opts.Timeout, h.rep)
}

func (h *Host) restartIfNeeded(ctx context.Context) error {
	cc, err := GetClusterConfiguration(ctx, h.c)
	if err != nil {
		return err
	}
	need, why, err := NeedsAPIServerRestart(ctx, h.c, cc)
	if err != nil {
		return err
	}
	if h.ccChanged && !need {
		need, why = true, "the ClusterConfiguration changed"
	}
	if !need {
		return nil
	}
	if h.opts.NoRestart {
		h.rep.Warn(fmt.Sprintf("ks-apiserver was not restarted (--no-restart; %s): it keeps the old proxy address until you run: kubectl -n %s rollout restart deployment %s%s",
			why, kubesphere.Namespace, kubesphere.APIServerName, h.c.contextFlag()))
		return nil
	}
	p, err := RestartDeployment(ctx, h.c, kubesphere.Namespace, kubesphere.APIServerName, h.opts.DryRun)
	if err != nil {
		return err
	}
	h.log.Record(Change{Object: "Deployment " + kubesphere.Namespace + "/" + kubesphere.APIServerName, Action: "restart", Summary: "rollout restart", Patch: p})
	h.rep.Step("restarted ks-apiserver")
	return WaitForRolloutUntil(ctx, h.c, kubesphere.Namespace, kubesphere.APIServerName, h.deadline, h.opts.Timeout, h.rep)
}

// dryRunRest previews the steps after the role patch without waiting for anything.
func (h *Host) dryRunRest(ctx context.Context, st *HostState, res *HostResult) (*HostResult, error) {
	if res.ProxyPublishAddress == "" {
		res.Pending = append(res.Pending, "the proxy address: Service tower does not exist until ks-installer runs with clusterRole host; then its load balancer address is used, or --proxy-publish-address is needed")
	}
	if h.opts.Tunnel == kubesphere.TunnelKsMc {
		if st.TowerDeploy == nil && h.opts.DryRun == DryRunServer {
			// Nothing to send yet: the installer creates tower first. Show the rendering.
			if err := h.opts.Proxy.Validate(); err != nil {
				return res, err
			}
			h.log.Record(Change{Object: "Deployment " + kubesphere.Namespace + "/" + kubesphere.TowerName, Action: "update",
				Summary: "run the ks-mc proxy (" + h.opts.Proxy.Image + ") once ks-installer created tower"})
		} else if err := h.switchTunnel(ctx); err != nil {
			return res, err
		}
	}
	willRestart := h.ccChanged
	if !willRestart {
		need, _, err := NeedsAPIServerRestart(ctx, h.c, st.CC)
		if err != nil {
			return res, err
		}
		willRestart = need
	}
	if willRestart && !h.opts.NoRestart {
		p, err := RestartDeployment(ctx, h.c, kubesphere.Namespace, kubesphere.APIServerName, h.opts.DryRun)
		if err != nil {
			return res, err
		}
		h.log.Record(Change{Object: "Deployment " + kubesphere.Namespace + "/" + kubesphere.APIServerName, Action: "restart", Summary: "rollout restart", Patch: p})
	}
	res.Changed = len(res.Changes) > 0
	return res, nil
}

func (h *Host) verify(ctx context.Context, res *HostResult) {
	var p Preflight
	if res.ProxyPublishAddress != "" {
		err := CheckProxyHealth(ctx, res.ProxyPublishAddress, h.opts.HealthTimeout)
		// A proxy rolled out just now may need a moment to listen.
		for end := time.Now().Add(min(h.opts.HealthWait, h.remaining())); err != nil && h.tunnelSwitched && time.Now().Before(end) && ctx.Err() == nil; {
			h.rep.Progress("waiting for the proxy to answer on " + res.ProxyPublishAddress)
			time.Sleep(time.Second)
			err = CheckProxyHealth(ctx, res.ProxyPublishAddress, h.opts.HealthTimeout)
		}
		if err != nil {
			p.Warn("members' agents must reach it: check firewalls, the NodePort or the load balancer",
				"the proxy did not answer on %s from this machine (%v)", res.ProxyPublishAddress, err)
		} else {
			p.OK("the proxy answers GET /health on %s", res.ProxyPublishAddress)
		}
	}
	cfg, err := GetKubeSphereConfig(ctx, h.c)
	switch {
	case err != nil:
		p.Warn("", "cannot read kubesphere-config: %v", err)
	case cfg.Multicluster.ClusterRole != kubesphere.RoleHost || !cfg.Multicluster.Enable:
		p.Error("see: "+InstallerLogsCommand(h.c.Context), "kubesphere-config has clusterRole %q, enable %t", cfg.Multicluster.ClusterRole, cfg.Multicluster.Enable)
	case res.AddressSource != AddressFromLoadBalancer && cfg.Multicluster.ProxyPublishAddress != res.ProxyPublishAddress:
		p.Error("see: "+InstallerLogsCommand(h.c.Context), "kubesphere-config has proxyPublishAddress %q, want %q", cfg.Multicluster.ProxyPublishAddress, res.ProxyPublishAddress)
	default:
		p.OK("kubesphere-config: clusterRole host, multicluster enabled")
	}
	for _, c := range p.Checks {
		if c.Severity == SeverityWarn {
			h.rep.Warn(c.Message + hintSuffix(c))
		}
	}
	res.Verify = p.Checks
}
