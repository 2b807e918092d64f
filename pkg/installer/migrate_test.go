package installer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

const migrateToken = "5eC7e70ken5eC7e70ken5eC7e70ken5eC7e70ken5eC7e70ken5eC7e70ken00"

// migrateFixture: a host whose tower Deployment runs the ks-mc proxy (https, CA pin given), a
// Cluster member1 bound to the member, and the member's Tower agent.
func migrateFixture(t *testing.T) *joinFixture {
	t.Helper()
	c := memberCluster("member1", "uid-member", false)
	_ = unstructured.SetNestedField(c.Object, migrateToken, "spec", "connection", "token")
	f := newJoinFixture(t, c)
	ctx := context.Background()
	setConfig(f.host, strings.Replace(hostKSConfig, "http://203.0.113.10:30881", "https://203.0.113.10:30881", 1))
	d, _ := f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	d.Spec.Template.Spec.Containers[0].Command = nil
	d.Spec.Template.Spec.Containers[0].Args = []string{"proxy", "--bind-address=$(POD_IP)"}
	_, _ = f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Update(ctx, d, metav1.UpdateOptions{})
	objs, err := manifests.RenderAgent(kubesphere.TunnelTower, manifests.AgentValues{ClusterName: "member1", Token: migrateToken, ProxyServer: "http://203.0.113.10:30881"})
	if err != nil {
		t.Fatal(err)
	}
	tower := agentFromObject(t, objs[0].Object)
	tower.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if _, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Create(ctx, tower, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.host.clearActions()
	f.member.clearActions()
	return f
}

func agentFromObject(t *testing.T, obj map[string]any) *appsv1.Deployment {
	t.Helper()
	b, _ := json.Marshal(obj)
	d := &appsv1.Deployment{}
	if err := json.Unmarshal(b, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// simulateKsMcAgent plays the member's kubelet and the host's proxy for the migrated agent: the
// ks-mc-agent Deployment becomes available (unless broken), then the heartbeat Lease says a ks-mc
// session answers.
func (f *joinFixture) simulateKsMcAgent(t *testing.T, broken bool) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
			d, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.MigratedAgentName, metav1.GetOptions{})
			if err != nil || broken {
				continue
			}
			if d.Status.AvailableReplicas != 1 {
				d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
				_, _ = f.member.kube.AppsV1().Deployments(kubesphere.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
				continue
			}
			now := metav1.NewMicroTime(time.Now().Add(time.Second))
			l := &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: kubesphere.HeartbeatLeaseName("member1"), Namespace: kubesphere.Namespace,
					Labels:      map[string]string{kubesphere.HeartbeatClusterLabel: "member1"},
					Annotations: map[string]string{kubesphere.HeartbeatAgentsAnnotation: "2", kubesphere.AgentProtocolAnnotation: string(kubesphere.TunnelKsMc)}},
				Spec: coordinationv1.LeaseSpec{RenewTime: &now},
			}
			leases := f.host.kube.CoordinationV1().Leases(kubesphere.Namespace)
			if _, err := leases.Create(ctx, l, metav1.CreateOptions{}); err != nil {
				_, _ = leases.Update(ctx, l, metav1.UpdateOptions{})
			}
		}
	}()
	return func() { cancel(); <-done }
}

func (f *joinFixture) migrate(opts MigrateOptions, rep Reporter) *Migrate {
	opts.PollInterval = 10 * time.Millisecond
	if opts.Timeout == 0 {
		opts.Timeout = 20 * time.Second
	}
	if opts.Probe == nil {
		opts.Probe = func(context.Context, *Clients, string) error { return nil }
	}
	opts.CACertHash = "sha256:" + strings.Repeat("ab", 32)
	return NewMigrate(f.host.c, []*Clients{f.member.c}, opts, rep)
}

func TestMigrateMovesTowerMemberToKsMcAgent(t *testing.T) {
	f := migrateFixture(t)
	ctx := context.Background()
	stop := f.simulateKsMcAgent(t, false)
	defer stop()
	rep := &recordingReporter{}
	res, err := f.migrate(MigrateOptions{}, rep).Run(ctx)
	if err != nil {
		t.Fatalf("%v\n%s", err, strings.Join(rep.lines, "\n"))
	}
	r := res.Members[0]
	if r.Result != MigrateMigrated || r.Name != "member1" || r.Protocol != string(kubesphere.TunnelKsMc) || !res.Changed || res.Summary.Migrated != 1 {
		t.Fatalf("result %+v", r)
	}
	if _, err := GetAgentDeployments(ctx, f.member.c); err != nil {
		t.Fatal(err)
	}
	if _, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.AgentName, metav1.GetOptions{}); err == nil {
		t.Error("the Tower agent is still there")
	}
	d, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.MigratedAgentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if InspectAgent(d).Tunnel != kubesphere.TunnelKsMc || d.Spec.Selector.MatchLabels["app"] != kubesphere.MigratedAgentName {
		t.Errorf("ks-mc agent %+v", d.Spec)
	}
	c, _ := GetCluster(ctx, f.host.c, "member1")
	if a := c.GetAnnotations(); a[kubesphere.AgentProtocolAnnotation] != "ks-mc" || a[kubesphere.AgentDeploymentAnnotation] != kubesphere.MigratedAgentName {
		t.Errorf("annotations %v", a)
	}
	// Order: agent applied, session evidence, annotation, then the Tower agent removed.
	log := strings.Join(rep.lines, "\n")
	iApply, iServe, iAnn, iDel := strings.Index(log, "deployment kubesphere-system/ks-mc-agent"), strings.Index(log, "serves"),
		strings.Index(log, "patch host"), strings.Index(log, "delete member (member1) deployment kubesphere-system/cluster-agent")
	if iApply < 0 || iServe < iApply || iAnn < iServe || iDel < iAnn {
		t.Errorf("steps out of order:\n%s", log)
	}
	if strings.Contains(log, migrateToken) || strings.Contains(mustJSONString(res), migrateToken) {
		t.Error("the token appears in the output")
	}

	// Re-run: already migrated, nothing changes.
	f.host.clearActions()
	f.member.clearActions()
	res, err = f.migrate(MigrateOptions{}, nil).Run(ctx)
	if err != nil || res.Members[0].Result != MigrateAlreadyMigrated || res.Changed {
		t.Fatalf("re-run: %v %+v", err, res.Members)
	}
	if m := append(f.host.mutations(), f.member.mutations()...); len(m) != 0 {
		t.Errorf("re-run changed %v", m)
	}
	// join and unjoin understand the migrated member.
	p, st := split(f.join(JoinOptions{CACertHash: "sha256:" + strings.Repeat("ab", 32)}, nil).Preflight(ctx))
	if st == nil || st.agentName != kubesphere.MigratedAgentName || agentNameFor(st) != kubesphere.MigratedAgentName {
		t.Fatalf("join of a migrated member: %s", checkLines(p))
	}
}

func mustJSONString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestMigrateDryRunChangesNothing(t *testing.T) {
	for _, dry := range []DryRun{DryRunClient, DryRunServer} {
		f := migrateFixture(t)
		res, err := f.migrate(MigrateOptions{DryRun: dry}, nil).Run(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", dry, err)
		}
		r := res.Members[0]
		if r.Result != MigrateWouldMigrate || res.Changed || len(r.Changes) < 3 || len(r.Pending) == 0 || res.DryRun != dry {
			t.Errorf("%s: %+v", dry, r)
		}
		for _, a := range append(f.host.mutations(), f.member.mutations()...) {
			if dry == DryRunClient {
				t.Errorf("%s sent %s %s", dry, a.GetVerb(), a.GetResource().Resource)
				continue
			}
			// Server dry run: every write carries dryRun=All (the fakes do not honour it, and the
			// dynamic fake drops the options of a patch).
			if a.GetResource().Resource == "clusters" {
				continue
			}
			b, _ := json.Marshal(a)
			if !strings.Contains(string(b), "All") {
				t.Errorf("%s: write without dryRun: %s %s", dry, a.GetVerb(), a.GetResource().Resource)
			}
		}
	}
}

// A ks-mc agent that cannot come up: the member stays on its Tower agent, the added Deployment
// and Secret are removed, the reason and the fix are reported, the run fails.
func TestMigrateFailureLeavesTowerAgent(t *testing.T) {
	f := migrateFixture(t)
	ctx := context.Background()
	stop := f.simulateKsMcAgent(t, true)
	defer stop()
	res, err := f.migrate(MigrateOptions{Timeout: 300 * time.Millisecond}, nil).Run(ctx)
	var me *MigrateError
	if !errors.As(err, &me) || len(me.Failed) != 1 {
		t.Fatalf("err %v", err)
	}
	r := res.Members[0]
	if r.Result != MigrateFailed || r.Protocol != string(kubesphere.TunnelTower) || !strings.Contains(r.Reason, "did not come up") || !strings.Contains(r.Advice, "re-run migrate") {
		t.Fatalf("result %+v", r)
	}
	if !strings.Contains(err.Error(), "stay on their Tower agent") || strings.Contains(err.Error(), migrateToken) {
		t.Errorf("error: %v", err)
	}
	if _, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.AgentName, metav1.GetOptions{}); err != nil {
		t.Errorf("the Tower agent is gone: %v", err)
	}
	if _, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.MigratedAgentName, metav1.GetOptions{}); err == nil {
		t.Error("the ks-mc agent was not rolled back")
	}
	if _, err := f.member.kube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.AgentTokenSecretName, metav1.GetOptions{}); err == nil {
		t.Error("the token Secret was not rolled back")
	}
	c, _ := GetCluster(ctx, f.host.c, "member1")
	if c.GetAnnotations()[kubesphere.AgentProtocolAnnotation] != "" {
		t.Error("the Cluster was annotated although the member stays on Tower")
	}
}

// The session is up but the Lease only ever says tower: migrate waits, then fails and rolls back.
func TestMigrateWaitsForTheKsMcProtocol(t *testing.T) {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kubesphere.HeartbeatAgentsAnnotation: "1", kubesphere.AgentProtocolAnnotation: "tower"}}}
	now := metav1.NewMicroTime(time.Now())
	l.Spec.RenewTime = &now
	if ok, why := leaseServesKsMc(l, time.Time{}); ok || !strings.Contains(why, "protocol tower") {
		t.Errorf("tower lease: %v %s", ok, why)
	}
	l.Annotations[kubesphere.AgentProtocolAnnotation] = "ks-mc"
	if ok, _ := leaseServesKsMc(l, now.Add(time.Second)); ok {
		t.Error("a Lease not renewed since the agent started counted")
	}
	if ok, _ := leaseServesKsMc(l, now.Add(-time.Second)); !ok {
		t.Error("a renewed ks-mc Lease did not count")
	}
	l.Annotations[kubesphere.HeartbeatAgentsAnnotation] = "0"
	if ok, _ := leaseServesKsMc(l, time.Time{}); ok {
		t.Error("0 sessions counted")
	}
}

// Preflight refusals: a host still on Tower, a context that is no member (skipped with
// --all-contexts), a member without an agent.
func TestMigratePreflight(t *testing.T) {
	ctx := context.Background()
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false))
	_, err := f.migrate(MigrateOptions{}, nil).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "runs KubeSphere's Tower") || !strings.Contains(err.Error(), "init-host --context host --tunnel=ks-mc") {
		t.Errorf("Tower host: %v", err)
	}
	f = migrateFixture(t)
	_ = f.host.dyn.Resource(kubesphere.ClusterGVR).Delete(ctx, "member1", metav1.DeleteOptions{})
	res, err := f.migrate(MigrateOptions{SkipUnmatched: true}, nil).Run(ctx)
	if err != nil || res.Members[0].Result != MigrateSkipped {
		t.Errorf("unmatched with --all-contexts: %v %+v", err, res.Members)
	}
	res, err = f.migrate(MigrateOptions{}, nil).Run(ctx)
	if err == nil || res.Members[0].Result != MigrateFailed || !strings.Contains(res.Members[0].Advice, "join") {
		t.Errorf("unmatched --context: %v %+v", err, res.Members)
	}
	f = migrateFixture(t)
	_ = f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Delete(ctx, kubesphere.AgentName, metav1.DeleteOptions{})
	res, err = f.migrate(MigrateOptions{}, nil).Run(ctx)
	if err == nil || !strings.Contains(res.Members[0].Reason, "no agent Deployment") {
		t.Errorf("no agent: %v %+v", err, res.Members)
	}
}

// unjoin of a member stopped half-way through migrate (both agents) removes both Deployments.
func TestUnjoinMigratedMember(t *testing.T) {
	f := migrateFixture(t)
	ctx := context.Background()
	objs, err := manifests.RenderAgent(kubesphere.TunnelKsMc, manifests.AgentValues{ClusterName: "member1", Token: migrateToken,
		ProxyServer: "https://203.0.113.10:30881", CACertHash: "sha256:" + strings.Repeat("ab", 32), DeploymentName: kubesphere.MigratedAgentName})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Create(ctx, agentFromObject(t, objs[1].Object), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := Unjoin(ctx, f.host.c, f.member.c, UnjoinOptions{PollInterval: 10 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ds, _ := GetAgentDeployments(ctx, f.member.c); len(ds) != 0 {
		t.Errorf("agents left: %d", len(ds))
	}
	var deleted []string
	for _, c := range res.Changes {
		if c.Action == "delete" && strings.Contains(c.Object, "deployment") {
			deleted = append(deleted, c.Object)
		}
	}
	if len(deleted) != 2 {
		t.Errorf("deleted %v", deleted)
	}
}

// The host apiserver's service proxy cannot reach the proxy pod (no route from here): the
// heartbeat is the evidence, said so, and the member is migrated.
func TestMigrateListenerUnreachableFromHere(t *testing.T) {
	f := migrateFixture(t)
	stop := f.simulateKsMcAgent(t, false)
	defer stop()
	probe := func(context.Context, *Clients, string) error {
		return fmt.Errorf("%w: Forbidden: resolve_deny", ErrListenerUnreachable)
	}
	res, err := f.migrate(MigrateOptions{Probe: probe}, nil).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r := res.Members[0]
	if r.Result != MigrateMigrated || !strings.Contains(strings.Join(r.Evidence, "\n"), "the heartbeat is the evidence") {
		t.Errorf("result %+v", r)
	}
}

// The probe's errors: the ks-mc listener's own "no agent" answer is conclusive, anything else
// (the service proxy's own refusal, a resolver's deny) is inconclusive.
func TestClassifyProbeError(t *testing.T) {
	if classifyProbeError(nil) != nil {
		t.Error("nil")
	}
	noAgent := errors.New(`the server is currently unable to handle the request: ks-mc proxy: cluster "member1": no agent connected`)
	if err := classifyProbeError(noAgent); errors.Is(err, ErrListenerUnreachable) {
		t.Errorf("the listener's 503 counted as unreachable: %v", err)
	}
	for _, e := range []error{errors.New("resolve_deny: denied destination (get services https:mc-member1:6443)"), errors.New("no endpoints available for service")} {
		if err := classifyProbeError(e); !errors.Is(err, ErrListenerUnreachable) {
			t.Errorf("%v: not inconclusive", e)
		}
	}
}
