package installer

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

func testProxy() manifests.ProxyValues {
	v := manifests.DefaultProxyValues()
	v.Image = "ghcr.io/ks-mc/ks-mc:v9.9.9"
	return v
}

func fastOpts() HostOptions {
	return HostOptions{Timeout: 5 * time.Second, LoadBalancerWait: 100 * time.Millisecond, PollInterval: 20 * time.Millisecond,
		HealthTimeout: 200 * time.Millisecond, HealthWait: 300 * time.Millisecond, Proxy: testProxy()}
}

func checkLines(p *Preflight) string {
	var b strings.Builder
	for _, c := range p.Checks {
		b.WriteString(c.String() + "\n")
	}
	return b.String()
}

func mustContain(t *testing.T, text string, frags ...string) {
	t.Helper()
	for _, f := range frags {
		if !strings.Contains(text, f) {
			t.Errorf("missing %q in:\n%s", f, text)
		}
	}
}

func TestHostPreflightFresh(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	p, st := split(NewHost(fc.c, fastOpts(), nil, nil).Preflight(context.Background()))
	lines := checkLines(p)
	if p.HasErrors() || st == nil {
		t.Fatalf("fresh cluster fails preflight:\n%s", lines)
	}
	mustContain(t, lines,
		"[ok] cluster of context test-host is reachable",
		"[ok] KubeSphere v3.4.1 installed",
		"[ok] cluster role: none, will become host",
		"[ok] ks-installer is not running",
		"[ok] permissions: allowed",
		"[ok] Service kubesphere-system/tower does not exist yet",
		"[ok] tunnel: KubeSphere's Tower")
	if m := fc.mutations(); len(m) != 0 {
		t.Errorf("preflight changed the cluster: %v", m)
	}
}

func TestHostPreflightNotInstalled(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	fc.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList"})
	fc.c.Dynamic = fc.dyn
	p, st := split(NewHost(fc.c, fastOpts(), nil, nil).Preflight(context.Background()))
	if st != nil || !p.HasErrors() {
		t.Fatalf("no error without KubeSphere:\n%s", checkLines(p))
	}
	mustContain(t, checkLines(p), "[error] KubeSphere is not installed", "install KubeSphere 3.x first")
}

func TestHostPreflightMember(t *testing.T) {
	member := strings.Replace(testCCYAML, "clusterRole: none", "clusterRole: member", 1)
	fc := newFakeCluster(t, member)
	// kubesphere-config agrees with the CC (a finished member).
	cm, _ := fc.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Get(context.Background(), kubesphere.ConfigName, metav1.GetOptions{})
	cm.Data[kubesphere.ConfigKey] = strings.Replace(testKSConfig, "clusterRole: none", "clusterRole: member", 1)
	_, _ = fc.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Update(context.Background(), cm, metav1.UpdateOptions{})

	p, _ := split(NewHost(fc.c, fastOpts(), nil, nil).Preflight(context.Background()))
	if !p.HasErrors() {
		t.Fatalf("member accepted:\n%s", checkLines(p))
	}
	mustContain(t, checkLines(p), "[error] cluster role is member", "does not support switching", "--force")
	opts := fastOpts()
	opts.Force = true
	p, _ = split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	if p.HasErrors() {
		t.Fatalf("--force still refuses:\n%s", checkLines(p))
	}
	mustContain(t, checkLines(p), "[warn] cluster role is member", "continuing because of --force")
}

func TestHostPreflightInstallerRunning(t *testing.T) {
	// The CC says host, kubesphere-config does not yet: an earlier init-host was interrupted while
	// the installer ran. Continuing is fine: it only waits.
	host := strings.Replace(testCCYAML, "clusterRole: none", "clusterRole: host", 1)
	fc := newFakeCluster(t, host)
	p, _ := split(NewHost(fc.c, fastOpts(), nil, nil).Preflight(context.Background()))
	if p.HasErrors() {
		t.Fatalf("resuming an interrupted run refused:\n%s", checkLines(p))
	}
	mustContain(t, checkLines(p), "[ok] ks-installer is still applying the host settings")

	// Someone else's change is in flight (an address ks-mc is not asked to set): refuse without --force.
	other := strings.Replace(testCCYAML, "clusterRole: none", "clusterRole: none\n    proxyPublishAddress: http://192.0.2.1:1234", 1)
	fc = newFakeCluster(t, other)
	opts := fastOpts()
	opts.ProxyPublishAddress = "http://192.0.2.9:30000"
	p, _ = split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	if !p.HasErrors() {
		t.Fatalf("running installer not reported:\n%s", checkLines(p))
	}
	mustContain(t, checkLines(p), "[error] ks-installer appears to be running", "proxyPublishAddress", "kubectl logs -n kubesphere-system -l app=ks-installer --context test-host -f", "--force")
}

func TestHostPreflightRBACAndAddress(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	fc.denied["patch deployments"] = true
	opts := fastOpts()
	opts.ProxyPublishAddress = "tower:8080"
	p, _ := split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	lines := checkLines(p)
	mustContain(t, lines, "[error] permissions: not allowed to patch deployments.apps/ks-apiserver -n kubesphere-system",
		"[error] proxy address \"tower:8080\" has no scheme", "fix --proxy-publish-address")
	if len(p.Errors()) != 2 {
		t.Errorf("want 2 errors reported together:\n%s", lines)
	}
	// --no-restart does not need the patch permission.
	opts = fastOpts()
	opts.NoRestart = true
	p, _ = split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	if p.HasErrors() {
		t.Errorf("--no-restart still needs patch deployments:\n%s", checkLines(p))
	}
}

func TestHostPreflightPendingService(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML, towerService(""))
	p, st := split(NewHost(fc.c, fastOpts(), nil, nil).Preflight(context.Background()))
	mustContain(t, checkLines(p), "[warn] Service kubesphere-system/tower has no external address (LoadBalancer <pending>); pass --proxy-publish-address")
	if st.Tower == nil {
		t.Error("state has no tower Service")
	}
}

func runHost(t *testing.T, fc *fakeCluster, opts HostOptions, ask AddressFunc) (*HostResult, *recorder, error) {
	t.Helper()
	rec := &recorder{}
	h := NewHost(fc.c, opts, rec, ask)
	plan := h.Preflight(context.Background())
	if p := plan.Findings(); p.HasErrors() {
		t.Fatalf("preflight:\n%s", checkLines(p))
	}
	res, err := h.Apply(context.Background(), plan)
	return res, rec, err
}

func changeSummaries(res *HostResult) string {
	var s []string
	for _, c := range res.Changes {
		s = append(s, c.Object+": "+c.Summary)
	}
	return strings.Join(s, "\n")
}

func TestHostRunFreshWithLoadBalancer(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("198.51.100.7", false)
	defer stop()
	res, rec, err := runHost(t, fc, fastOpts(), nil)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if res.ProxyPublishAddress != "http://198.51.100.7:8080" || res.AddressSource != AddressFromLoadBalancer || res.ClusterRole != "host" || res.Tunnel != kubesphere.TunnelTower {
		t.Errorf("result %+v", res)
	}
	mustContain(t, changeSummaries(res), "ClusterConfiguration kubesphere-system/ks-installer: set clusterRole: host", "Deployment kubesphere-system/ks-apiserver: rollout restart")
	cc := fc.cc()
	if cc.ClusterRole() != kubesphere.RoleHost || cc.ProxyPublishAddress() != "" {
		t.Errorf("CC role %q address %q (the load balancer address is not written)", cc.ClusterRole(), cc.ProxyPublishAddress())
	}
	d, _ := fc.kube.AppsV1().Deployments(kubesphere.Namespace).Get(context.Background(), kubesphere.APIServerName, metav1.GetOptions{})
	if d.Spec.Template.Annotations[RestartedAtAnnotation] == "" {
		t.Error("ks-apiserver not restarted")
	}
	// The unreachable address is a warning, not an error.
	mustContain(t, strings.Join(rec.warns, "\n"), "the proxy did not answer on http://198.51.100.7:8080")

	// Re-run: nothing to change.
	fc.clearActions()
	res, _, err = runHost(t, fc, fastOpts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed || len(res.Changes) != 0 {
		t.Errorf("re-run changed: %s", changeSummaries(res))
	}
	if m := fc.mutations(); len(m) != 0 {
		t.Errorf("re-run sent %v", m)
	}

	// Previewing a switch to the ks-mc tunnel: the load balancer address KubeSphere derives is
	// http://, which the ks-mc proxy refuses, so https:// is published explicitly (the proxy serves
	// TLS on that port), and ks-apiserver restarts for it.
	opts := fastOpts()
	opts.Tunnel, opts.DryRun = kubesphere.TunnelKsMc, DryRunClient
	res, _, err = runHost(t, fc, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := changeSummaries(res); got != "ClusterConfiguration kubesphere-system/ks-installer: set proxyPublishAddress: https://198.51.100.7:8080\n"+
		"Deployment kubesphere-system/tower: run the ks-mc proxy (ghcr.io/ks-mc/ks-mc:v9.9.9)\n"+
		"Deployment kubesphere-system/ks-apiserver: rollout restart" {
		t.Errorf("ks-mc tunnel dry run changes:\n%s", got)
	}
	// With the address already published, previewing only a tunnel switch does not announce a
	// ks-apiserver restart.
	fc.setCCAddress(t, "https://198.51.100.7:8080")
	res, _, err = runHost(t, fc, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := changeSummaries(res); got != "Deployment kubesphere-system/tower: run the ks-mc proxy (ghcr.io/ks-mc/ks-mc:v9.9.9)" {
		t.Errorf("tunnel-only dry run changes:\n%s", got)
	}
}

func TestHostRunPendingAsksAfterInstaller(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("", false)
	defer stop()
	var got AddressRequest
	asked := 0
	ask := func(_ context.Context, req AddressRequest) (string, error) {
		asked++
		got = req
		return req.Candidates[0].Address, nil
	}
	res, _, err := runHost(t, fc, fastOpts(), ask)
	if err != nil {
		t.Fatal(err)
	}
	if asked != 1 || got.NodePort != 31234 || !got.Changed || !strings.Contains(got.Reason, "<pending>") {
		t.Errorf("asked %d times: %+v", asked, got)
	}
	if len(got.Candidates) != 3 || got.Candidates[0].Address != "http://203.0.113.2:31234" {
		t.Errorf("candidates %+v", got.Candidates)
	}
	if res.ProxyPublishAddress != "http://203.0.113.2:31234" || res.AddressSource != AddressFromAnswer {
		t.Errorf("result %+v", res)
	}
	cc := fc.cc()
	if cc.ProxyPublishAddress() != "http://203.0.113.2:31234" {
		t.Errorf("CC address %q", cc.ProxyPublishAddress())
	}
	cfg, _ := GetKubeSphereConfig(context.Background(), fc.c)
	if cfg.Multicluster.ProxyPublishAddress != "http://203.0.113.2:31234" || !cfg.Multicluster.Enable {
		t.Errorf("kubesphere-config %+v", cfg.Multicluster)
	}
}

func TestHostRunPendingWithoutAnswerChangesNothing(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML, towerService(""))
	stop := fc.fakeInstaller("", false)
	defer stop()
	fc.clearActions()
	noTTY := func(context.Context, AddressRequest) (string, error) {
		return "", errors.New("no terminal: pass --proxy-publish-address")
	}
	_, _, err := runHost(t, fc, fastOpts(), noTTY)
	if err == nil || !strings.Contains(err.Error(), "--proxy-publish-address") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "clusterRole is host now") {
		t.Errorf("claims a change: %v", err)
	}
	if m := fc.mutations(); len(m) != 0 {
		t.Errorf("changed the cluster without an answer: %v", m)
	}
	if fc.cc().ClusterRole() != kubesphere.RoleNone {
		t.Error("role changed")
	}
}

func TestHostRunFlagAddressOnePatch(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("", false)
	defer stop()
	opts := fastOpts()
	opts.ProxyPublishAddress = "HTTP://10.0.0.1:31234/"
	res, _, err := runHost(t, fc, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	patches := 0
	for _, a := range fc.dyn.Actions() {
		if a.GetVerb() == "patch" {
			patches++
		}
	}
	if patches != 1 {
		t.Errorf("%d CC patches, want role and address in one", patches)
	}
	if res.ProxyPublishAddress != "http://10.0.0.1:31234" || fc.cc().ProxyPublishAddress() != "http://10.0.0.1:31234" {
		t.Errorf("address %q / CC %q", res.ProxyPublishAddress, fc.cc().ProxyPublishAddress())
	}
}

func TestHostRunDryRunChangesNothing(t *testing.T) {
	for _, mode := range []DryRun{DryRunClient} {
		t.Run(string(mode), func(t *testing.T) {
			fc := newFakeCluster(t, testCCYAML, towerService(""), towerDeployment())
			opts := fastOpts()
			opts.DryRun = mode
			opts.Tunnel = kubesphere.TunnelKsMc
			opts.ProxyPublishAddress = "https://10.0.0.1:31234"
			fc.clearActions()
			res, _, err := runHost(t, fc, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if m := fc.mutations(); len(m) != 0 {
				t.Errorf("dry run sent %v", m)
			}
			if fc.cc().ClusterRole() != kubesphere.RoleNone {
				t.Error("role changed")
			}
			s := changeSummaries(res)
			mustContain(t, s, "set clusterRole: host, proxyPublishAddress: https://10.0.0.1:31234", "Deployment kubesphere-system/tower: run the ks-mc proxy", "ks-apiserver: rollout restart")
			if res.DryRun != mode || !res.Changed {
				t.Errorf("result %+v", res)
			}
			for _, c := range res.Changes {
				if strings.Contains(c.Object, "tower") && c.Manifest == nil {
					t.Error("proxy change carries no manifest")
				}
			}
		})
	}
}

func TestHostRunDryRunFreshPending(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	opts := fastOpts()
	opts.DryRun = DryRunClient
	fc.clearActions()
	res, _, err := runHost(t, fc, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Pending) != 1 || !strings.Contains(res.Pending[0], "--proxy-publish-address") {
		t.Errorf("pending %v", res.Pending)
	}
	if len(fc.mutations()) != 0 {
		t.Error("dry run changed the cluster")
	}
}

func TestHostRunInstallerTimeout(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("", true)
	defer stop()
	opts := fastOpts()
	opts.Timeout = 400 * time.Millisecond
	opts.ProxyPublishAddress = "http://10.0.0.1:31234"
	_, _, err := runHost(t, fc, opts, nil)
	var te *InstallerTimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v", err)
	}
	mustContain(t, err.Error(), "timed out after 400ms", "status.multicluster.status is unset", "kubectl logs -n kubesphere-system -l app=ks-installer --context test-host")
}

func TestHostRunInterruptedThenResumed(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	opts := fastOpts()
	opts.ProxyPublishAddress = "http://10.0.0.1:31234"
	h := NewHost(fc.c, opts, nil, nil)
	plan := h.Preflight(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if _, err := h.Apply(ctx, plan); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("interrupted run: %v", err)
	}
	if fc.cc().ClusterRole() != kubesphere.RoleHost {
		t.Fatal("role not patched before the interruption")
	}
	stop := fc.fakeInstaller("", false)
	defer stop()
	res, _, err := runHost(t, fc, opts, nil)
	if err != nil {
		t.Fatalf("resumed run: %v", err)
	}
	if fc.cc().ProxyPublishAddress() != "http://10.0.0.1:31234" || res.ClusterRole != kubesphere.RoleHost {
		t.Errorf("resumed result %+v", res)
	}
}

func TestHostRunTunnelKsMc(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("198.51.100.7", false)
	defer stop()
	opts := fastOpts()
	opts.Tunnel = kubesphere.TunnelKsMc
	res, _, err := runHost(t, fc, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Tunnel != kubesphere.TunnelKsMc {
		t.Errorf("tunnel %q", res.Tunnel)
	}
	d, _ := fc.kube.AppsV1().Deployments(kubesphere.Namespace).Get(context.Background(), kubesphere.TowerName, metav1.GetOptions{})
	if TunnelOf(d) != kubesphere.TunnelKsMc {
		t.Fatalf("tower not switched: %+v", d.Spec.Template.Spec.Containers)
	}
	if args := d.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--tls-san=198.51.100.7") {
		t.Errorf("proxy args %q lack the published host as a certificate name", args)
	}
	// The load balancer's address is published as https:// (KubeSphere would derive http://,
	// which the proxy refuses), and plaintext agents are refused.
	if res.ProxyPublishAddress != "https://198.51.100.7:8080" || fc.cc().ProxyPublishAddress() != "https://198.51.100.7:8080" || res.AddressSource != AddressFromLoadBalancer {
		t.Errorf("address %q (%s), CC %q: want https://198.51.100.7:8080 published", res.ProxyPublishAddress, res.AddressSource, fc.cc().ProxyPublishAddress())
	}
	if args := d.Spec.Template.Spec.Containers[0].Args; slices.Contains(args, manifests.ProxyAllowPlaintextArg) {
		t.Errorf("proxy args %q accept plaintext agents without being asked", args)
	}
	// Re-run without --tunnel keeps the proxy and changes nothing.
	fc.clearActions()
	res, _, err = runHost(t, fc, fastOpts(), nil)
	if err != nil || res.Changed || res.Tunnel != kubesphere.TunnelKsMc {
		t.Errorf("re-run: %v %s", err, changeSummaries(res))
	}
	// Asking for Tower back is refused in preflight.
	back := fastOpts()
	back.Tunnel = kubesphere.TunnelTower
	p, _ := split(NewHost(fc.c, back, nil, nil).Preflight(context.Background()))
	mustContain(t, checkLines(p), "[error] tunnel: Deployment tower runs the ks-mc proxy")
}

func TestEnsureProxyDeploymentConvertsTower(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML, towerDeployment())
	ctx := context.Background()
	changed, _, err := EnsureProxyDeployment(ctx, fc.c, testProxy(), DryRunNone)
	if err != nil || !changed {
		t.Fatalf("changed %v, %v", changed, err)
	}
	d, _ := fc.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	spec := d.Spec.Template.Spec
	c := spec.Containers[0]
	if len(spec.Containers) != 1 || len(c.Command) != 0 || len(spec.Volumes) != 1 || spec.Volumes[0].Name != "tmp" ||
		len(c.VolumeMounts) != 1 || c.VolumeMounts[0].Name != "tmp" {
		t.Errorf("Tower leftovers (command, ca volume): command %q volumes %v mounts %v", c.Command, spec.Volumes, c.VolumeMounts)
	}
	if c.Image != "ghcr.io/ks-mc/ks-mc:v9.9.9" || c.Args[0] != "proxy" || spec.ServiceAccountName != "kubesphere" {
		t.Errorf("container %+v", c)
	}
	if d.Spec.Template.Labels["app"] != "tower" || d.Spec.Template.Labels["app.kubernetes.io/name"] != "tower" {
		t.Errorf("pod labels %v", d.Spec.Template.Labels)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy %v", d.Spec.Strategy.Type)
	}
	// What the API server defaults (seen on kube-apiserver 1.34) must not read as a difference.
	serverDefaults(d)
	if _, err := fc.kube.AppsV1().Deployments(kubesphere.Namespace).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	changed, _, err = EnsureProxyDeployment(ctx, fc.c, testProxy(), DryRunNone)
	if err != nil || changed {
		t.Errorf("second call changed %v, %v", changed, err)
	}
	// A new image is a change.
	v := testProxy()
	v.Image = "ghcr.io/ks-mc/ks-mc:v10.0.0"
	if changed, _, _ := EnsureProxyDeployment(ctx, fc.c, v, DryRunNone); !changed {
		t.Error("image change not applied")
	}
}

func TestEnsureProxyDeploymentCreatesWithApply(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	changed, _, err := EnsureProxyDeployment(context.Background(), fc.c, testProxy(), DryRunNone)
	if err != nil || !changed {
		t.Fatalf("changed %v, %v", changed, err)
	}
	var applied bool
	for _, a := range fc.kube.Actions() {
		if a.GetVerb() == "patch" && a.GetResource().Resource == "deployments" {
			applied = true
		}
	}
	if !applied {
		t.Error("no server-side apply sent")
	}
	d, err := fc.kube.AppsV1().Deployments(kubesphere.Namespace).Get(context.Background(), kubesphere.TowerName, metav1.GetOptions{})
	if err != nil || TunnelOf(d) != kubesphere.TunnelKsMc {
		t.Errorf("created %v, %v", d, err)
	}
}

func TestNeedsAPIServerRestart(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	ctx := context.Background()
	cc := fc.cc()
	if need, _, err := NeedsAPIServerRestart(ctx, fc.c, cc); err != nil || need {
		t.Errorf("never changed by ks-mc: need %v, %v", need, err)
	}
	t0 := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	setManaged := func(obj metav1.Object, at time.Time) {
		obj.SetManagedFields([]metav1.ManagedFieldsEntry{
			{Manager: "kubectl-edit", Operation: metav1.ManagedFieldsOperationUpdate, Time: &metav1.Time{Time: at.Add(time.Hour)}},
			{Manager: kubesphere.FieldManager, Operation: metav1.ManagedFieldsOperationUpdate, Time: &metav1.Time{Time: at}},
		})
	}
	setManaged(cc.Object, t0)
	if need, why, _ := NeedsAPIServerRestart(ctx, fc.c, cc); !need || !strings.Contains(why, "never") {
		t.Errorf("changed, never restarted: %v %q", need, why)
	}
	// The fake clientset rewrites managedFields on writes, so serve the Deployment from a reactor.
	var restartedAt time.Time
	fc.kube.PrependReactor("get", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := readyDeployment(kubesphere.APIServerName, map[string]string{"app": "ks-apiserver"})
		setManaged(d, restartedAt)
		return true, d, nil
	})
	for _, tc := range []struct {
		restart time.Time
		need    bool
	}{{t0.Add(-time.Minute), true}, {t0, false}, {t0.Add(time.Minute), false}} {
		restartedAt = tc.restart
		if need, why, _ := NeedsAPIServerRestart(ctx, fc.c, cc); need != tc.need {
			t.Errorf("restart at %s: need %v (%s), want %v", tc.restart, need, why, tc.need)
		}
	}
}

func TestHostPatchDescribe(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	p := HostPatch(fc.cc(), "http://10.0.0.1:1")
	if got := describeHostPatch(p); got != "set clusterRole: host, proxyPublishAddress: http://10.0.0.1:1" {
		t.Errorf("describe %q", got)
	}
}

func TestHostRunVerifiesHealthAndConfig(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			_, _ = w.Write([]byte("OK\n"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("", false)
	defer stop()
	opts := fastOpts()
	opts.ProxyPublishAddress = srv.URL
	res, rec, err := runHost(t, fc, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, c := range res.Verify {
		lines = append(lines, c.String())
	}
	mustContain(t, strings.Join(lines, "\n"), "[ok] the proxy answers GET /health on "+srv.URL, "[ok] kubesphere-config: clusterRole host, multicluster enabled")
	if len(rec.warns) != 0 {
		t.Errorf("warnings %v", rec.warns)
	}
}

// serverDefaults applies the defaults kube-apiserver 1.34 gives a Deployment's pod template.
func serverDefaults(d *appsv1.Deployment) {
	spec := &d.Spec.Template.Spec
	spec.RestartPolicy, spec.DNSPolicy, spec.SchedulerName = "Always", "ClusterFirst", "default-scheduler"
	spec.DeprecatedServiceAccount = spec.ServiceAccountName
	spec.SecurityContext = &corev1.PodSecurityContext{}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		c.TerminationMessagePath, c.TerminationMessagePolicy = "/dev/termination-log", "File"
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
			if p == nil {
				continue
			}
			if p.TimeoutSeconds == 0 {
				p.TimeoutSeconds = 1
			}
			if p.SuccessThreshold == 0 {
				p.SuccessThreshold = 1
			}
			if p.FailureThreshold == 0 {
				p.FailureThreshold = 3
			}
			if p.HTTPGet != nil && p.HTTPGet.Scheme == "" {
				p.HTTPGet.Scheme = corev1.URISchemeHTTP
			}
		}
		for j := range c.Env {
			if f := c.Env[j].ValueFrom; f != nil && f.FieldRef != nil && f.FieldRef.APIVersion == "" {
				f.FieldRef.APIVersion = "v1"
			}
		}
	}
	for i := range spec.Volumes {
		if spec.Volumes[i].EmptyDir != nil {
			spec.Volumes[i].EmptyDir = &corev1.EmptyDirVolumeSource{}
		}
	}
	rev, pds := int32(10), int32(600)
	d.Spec.RevisionHistoryLimit, d.Spec.ProgressDeadlineSeconds = &rev, &pds
}

func TestHostRunFreshPendingWithoutAnswerSaysHowToFinish(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("", false)
	defer stop()
	noTTY := func(context.Context, AddressRequest) (string, error) {
		return "", errors.New("no terminal: pass --proxy-publish-address")
	}
	_, _, err := runHost(t, fc, fastOpts(), noTTY)
	if err == nil {
		t.Fatal("no error without an address")
	}
	// Service tower only exists once the role is set: the error says what happened and how to finish.
	mustContain(t, err.Error(), "pass --proxy-publish-address", "clusterRole is host now; re-running init-host with --proxy-publish-address completes the set-up")
	if fc.cc().ClusterRole() != kubesphere.RoleHost || fc.cc().ProxyPublishAddress() != "" {
		t.Errorf("role %q address %q", fc.cc().ClusterRole(), fc.cc().ProxyPublishAddress())
	}
	// Re-running with the flag completes it.
	opts := fastOpts()
	opts.ProxyPublishAddress = "http://10.0.0.1:31234"
	res, _, err := runHost(t, fc, opts, noTTY)
	if err != nil || fc.cc().ProxyPublishAddress() != "http://10.0.0.1:31234" || res.AddressSource != AddressFromFlag {
		t.Errorf("re-run with the flag: %v %+v", err, res)
	}
}

// With the bundled proxy, an http:// address is refused in preflight (the proxy refuses plaintext
// agents), naming https:// and --allow-plaintext-agents; with --allow-plaintext-agents it is a
// warning; an https:// address is neither.
func TestHostPreflightRefusesPlaintextKsMcTunnel(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	opts := fastOpts()
	opts.Tunnel = kubesphere.TunnelKsMc
	opts.ProxyPublishAddress = "http://198.51.100.7:8080"
	p, _ := split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	mustContain(t, checkLines(p),
		"[error] the proxy address is http://198.51.100.7:8080, but the ks-mc proxy refuses agents over plain http",
		"--proxy-publish-address=https://198.51.100.7:8080", "or pass --allow-plaintext-agents")
	yes, no := true, false
	opts.AllowPlaintextAgents = &yes
	p, st := split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	mustContain(t, checkLines(p),
		"[warn] agents will reach the ks-mc proxy at http://198.51.100.7:8080 without TLS",
		"--proxy-publish-address=https://198.51.100.7:8080")
	if p.HasErrors() || !st.PlaintextAgents {
		t.Fatalf("with --allow-plaintext-agents a plaintext address is a warning, not an error:\n%s", checkLines(p))
	}
	opts.AllowPlaintextAgents = &no
	if p, _ := split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background())); !p.HasErrors() {
		t.Fatalf("--allow-plaintext-agents=false accepted an http:// address:\n%s", checkLines(p))
	}
	opts.AllowPlaintextAgents = nil
	opts.ProxyPublishAddress = "https://198.51.100.7:8080"
	p, st = split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	if strings.Contains(checkLines(p), "without TLS") || p.HasErrors() || st.PlaintextAgents {
		t.Fatalf("https address warned:\n%s", checkLines(p))
	}
	// KubeSphere's own Tower: no such check (Tower speaks ws:// or wss:// itself).
	opts.Tunnel = kubesphere.TunnelTower
	opts.ProxyPublishAddress = "http://198.51.100.7:8080"
	p, _ = split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	if strings.Contains(checkLines(p), "without TLS") || p.HasErrors() {
		t.Fatalf("tower tunnel warned:\n%s", checkLines(p))
	}
}

// An http:// address already published is refused too: the fix names the https address.
func TestHostPreflightRefusesPublishedPlaintextForKsMc(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML, towerService(""), towerDeployment())
	fc.setCCAddress(t, "http://10.0.0.1:31234")
	opts := fastOpts()
	opts.Tunnel = kubesphere.TunnelKsMc
	p, _ := split(NewHost(fc.c, opts, nil, nil).Preflight(context.Background()))
	mustContain(t, checkLines(p), "[error] the proxy address is http://10.0.0.1:31234", "--proxy-publish-address=https://10.0.0.1:31234")
}

// --allow-plaintext-agents is rendered into the proxy only when asked for; a re-run without the
// flag keeps it (with a warning) so that members connected over http:// are not cut off; turning
// it off while the address is http:// is refused in preflight, with nothing changed.
func TestHostRunPlaintextAgentsOptIn(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	stop := fc.fakeInstaller("198.51.100.7", false)
	defer stop()
	ctx := context.Background()
	yes, no := true, false
	opts := fastOpts()
	opts.Tunnel, opts.AllowPlaintextAgents, opts.ProxyPublishAddress = kubesphere.TunnelKsMc, &yes, "http://198.51.100.7:8080"
	if _, _, err := runHost(t, fc, opts, nil); err != nil {
		t.Fatal(err)
	}
	d, _ := fc.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	if !manifests.ProxyAllowsPlaintextAgents(d) {
		t.Fatalf("proxy args %q lack %s", d.Spec.Template.Spec.Containers[0].Args, manifests.ProxyAllowPlaintextArg)
	}
	// Re-run without the flag: kept, with a warning; nothing changes.
	rerun := fastOpts()
	rerun.Tunnel = kubesphere.TunnelKsMc
	p, _ := split(NewHost(fc.c, rerun, nil, nil).Preflight(ctx))
	if p.HasErrors() {
		t.Fatalf("re-run without the flag refused:\n%s", checkLines(p))
	}
	mustContain(t, checkLines(p), "without TLS", "--allow-plaintext-agents kept from the running proxy")
	fc.clearActions()
	res, _, err := runHost(t, fc, rerun, nil)
	if err != nil || res.Changed {
		t.Fatalf("re-run: %v %s", err, changeSummaries(res))
	}
	d, _ = fc.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	if !manifests.ProxyAllowsPlaintextAgents(d) {
		t.Fatal("a re-run without the flag dropped --allow-plaintext-agents")
	}
	// Turning it off while the address is http:// would cut members off: refused, nothing sent.
	off := rerun
	off.AllowPlaintextAgents = &no
	fc.clearActions()
	p, _ = split(NewHost(fc.c, off, nil, nil).Preflight(ctx))
	mustContain(t, checkLines(p), "[error] the proxy address is http://198.51.100.7:8080, but --allow-plaintext-agents=false")
	if m := fc.mutations(); len(m) != 0 {
		t.Errorf("preflight sent %v", m)
	}
	// Off together with an https address: the proxy is re-rendered without it, with a warning.
	off.ProxyPublishAddress = "https://198.51.100.7:8080"
	p, _ = split(NewHost(fc.c, off, nil, nil).Preflight(ctx))
	mustContain(t, checkLines(p), "[warn] --allow-plaintext-agents=false: the ks-mc proxy will refuse agents that connect over plain http")
	if _, _, err := runHost(t, fc, off, nil); err != nil {
		t.Fatal(err)
	}
	d, _ = fc.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	if manifests.ProxyAllowsPlaintextAgents(d) || fc.cc().ProxyPublishAddress() != "https://198.51.100.7:8080" {
		t.Errorf("args %q, address %q", d.Spec.Template.Spec.Containers[0].Args, fc.cc().ProxyPublishAddress())
	}
}

// A pending load balancer with --tunnel=ks-mc: the suggested addresses are https://, and an http://
// answer is refused.
func TestHostAskKsMcSuggestsHTTPS(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML, towerService(""), towerDeployment())
	opts := fastOpts()
	opts.Tunnel, opts.DryRun = kubesphere.TunnelKsMc, DryRunClient
	var got AddressRequest
	answer := ""
	ask := func(_ context.Context, req AddressRequest) (string, error) { got = req; return answer, nil }
	h := NewHost(fc.c, opts, &recorder{}, ask)
	plan := h.Preflight(context.Background())
	if p := plan.Findings(); p.HasErrors() {
		t.Fatalf("preflight:\n%s", checkLines(p))
	}
	answer = "http://10.0.0.1:31234"
	if _, err := h.Apply(context.Background(), plan); err == nil || !strings.Contains(err.Error(), "use https://10.0.0.1:31234") {
		t.Fatalf("http:// answer: %v", err)
	}
	if len(got.Candidates) == 0 {
		t.Fatal("no candidates")
	}
	for _, c := range got.Candidates {
		if !strings.HasPrefix(c.Address, "https://") {
			t.Errorf("candidate %s is not https", c.Address)
		}
	}
}
