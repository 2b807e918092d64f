package installer

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

func addAgent(t *testing.T, f *joinFixture, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Create(ctx, agentDeployment(t, "http://203.0.113.10:30881", name), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: kubesphere.AgentTokenSecretName, Namespace: kubesphere.Namespace,
		Labels: map[string]string{kubesphere.ManagedByLabel: kubesphere.ManagedByValue}}}
	if _, err := f.member.kube.CoreV1().Secrets(kubesphere.Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestUnjoinRemovesClusterThenAgent(t *testing.T) {
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false), memberCluster("m2", "uid-2", false))
	addAgent(t, f, "member1")
	f.host.clearActions()
	f.member.clearActions()
	res, err := Unjoin(context.Background(), f.host.c, f.member.c, UnjoinOptions{PollInterval: 10e6}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "member1" || !res.Changed || len(res.LeftBehind) == 0 {
		t.Errorf("result = %+v", res)
	}
	if c, _ := GetCluster(context.Background(), f.host.c, "member1"); c != nil {
		t.Error("Cluster member1 still exists")
	}
	if c, _ := GetCluster(context.Background(), f.host.c, "m2"); c == nil {
		t.Error("another member's Cluster was removed")
	}
	if d, _ := GetAgentDeployment(context.Background(), f.member.c); d != nil {
		t.Error("agent still exists")
	}
	if _, err := f.member.kube.CoreV1().Secrets(kubesphere.Namespace).Get(context.Background(), kubesphere.AgentTokenSecretName, metav1.GetOptions{}); err == nil {
		t.Error("token Secret still exists")
	}
	// Order: the host's Cluster is deleted before anything on the member.
	hostDel := f.host.mutations()
	if len(hostDel) == 0 || hostDel[0].GetVerb() != "delete" {
		t.Fatalf("host actions %v", hostDel)
	}
	// The member's CC is left alone.
	for _, a := range f.member.mutations() {
		if a.GetResource().Resource == "clusterconfigurations" {
			t.Errorf("unjoin touched the member's ClusterConfiguration: %v", a)
		}
	}
}

func TestUnjoinGuards(t *testing.T) {
	ctx := context.Background()
	// The host's own Cluster.
	hostC := memberCluster("host", "uid-host", false)
	hostC.SetLabels(map[string]string{kubesphere.ClusterHostRoleLabel: ""})
	f := newJoinFixture(t, hostC)
	if _, err := Unjoin(ctx, f.host.c, f.member.c, UnjoinOptions{Name: "host"}, nil); err == nil || !strings.Contains(err.Error(), "host's own cluster") {
		t.Errorf("err = %v", err)
	}
	// A Cluster of another member.
	f = newJoinFixture(t, memberCluster("member1", "uid-else", false))
	if _, err := Unjoin(ctx, f.host.c, f.member.c, UnjoinOptions{Name: "member1"}, nil); err == nil || !strings.Contains(err.Error(), "belongs to another cluster") {
		t.Errorf("err = %v", err)
	}
	if c, _ := GetCluster(ctx, f.host.c, "member1"); c == nil {
		t.Error("refused unjoin deleted the Cluster")
	}
	// Gone member without --force.
	f = newJoinFixture(t, memberCluster("member1", "uid-member", false))
	if _, err := Unjoin(ctx, f.host.c, nil, UnjoinOptions{Name: "member1"}, nil); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("err = %v", err)
	}
	// With --force: the host side only, and the rest explained.
	res, err := Unjoin(ctx, f.host.c, nil, UnjoinOptions{Name: "member1", Force: true, PollInterval: 10e6}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := GetCluster(ctx, f.host.c, "member1"); c != nil {
		t.Error("--force left the Cluster")
	}
	if !strings.Contains(strings.Join(res.LeftBehind, " "), "kubectl -n kubesphere-system delete deployment cluster-agent") {
		t.Errorf("left behind = %v", res.LeftBehind)
	}
	// An agent serving another cluster stays.
	f = newJoinFixture(t, memberCluster("member1", "uid-member", false))
	addAgent(t, f, "someone-else")
	if _, err := Unjoin(ctx, f.host.c, f.member.c, UnjoinOptions{Name: "member1", PollInterval: 10e6}, nil); err != nil {
		t.Fatal(err)
	}
	if d, _ := GetAgentDeployment(ctx, f.member.c); d == nil {
		t.Error("an agent of another cluster was removed")
	}
}

func TestUnjoinDryRun(t *testing.T) {
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false))
	addAgent(t, f, "member1")
	f.host.clearActions()
	f.member.clearActions()
	res, err := Unjoin(context.Background(), f.host.c, f.member.c, UnjoinOptions{DryRun: DryRunClient}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) != 3 {
		t.Errorf("changes = %+v", res.Changes)
	}
	if m := append(f.host.mutations(), f.member.mutations()...); len(m) != 0 {
		t.Errorf("dry run mutated: %v", m)
	}
}

func TestStatusRows(t *testing.T) {
	ready := memberCluster("member1", "uid-member", false)
	setCond(ready, kubesphere.ConditionAgentAvailable, "True")
	setCond(ready, kubesphere.ConditionReady, "True")
	_ = unstructured.SetNestedField(ready.Object, int64(3), "status", "nodeCount")
	_ = unstructured.SetNestedField(ready.Object, "v3.4.1", "status", "kubeSphereVersion")
	down := memberCluster("m2", "uid-2", false)
	setCond(down, kubesphere.ConditionAgentAvailable, "False")
	conds, _, _ := unstructured.NestedSlice(down.Object, "status", "conditions")
	conds = append(conds, map[string]any{"type": "Ready", "status": "False", "message": "Agent has not connected to proxy.", "lastTransitionTime": "2026-11-25T21:00:00Z"})
	_ = unstructured.SetNestedSlice(down.Object, conds, "status", "conditions")
	hostC := memberCluster("host", "uid-host", false)
	hostC.SetLabels(map[string]string{kubesphere.ClusterHostRoleLabel: ""})
	_ = unstructured.SetNestedField(hostC.Object, "direct", "spec", "connection", "type")
	f := newJoinFixture(t, ready, down, hostC)
	rep, err := Status(context.Background(), f.host.c, []*Clients{f.host.c, f.member.c})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Clusters) != 3 || rep.Clusters[0].Name != "host" || rep.Clusters[0].Role != kubesphere.RoleHost || rep.Clusters[0].Agent != "-" {
		t.Fatalf("rows = %+v", rep.Clusters)
	}
	r1, r2 := rep.Clusters[2], rep.Clusters[1]
	if r1.Name != "member1" || r1.Agent != "Connected" || r1.Ready != "True" || r1.Nodes != 3 || r1.KubeSphereVersion != "v3.4.1" || r1.Connection != "proxy" {
		t.Errorf("member1 row = %+v", r1)
	}
	if r2.Name != "m2" || r2.Agent != "Disconnected" || r2.Ready != "False" || r2.Message == "" || r2.LastTransition != "2026-11-25T21:00:00Z" {
		t.Errorf("m2 row = %+v", r2)
	}
	if rep.Contexts[0].Role != kubesphere.RoleHost || rep.Contexts[0].Cluster != "host" || rep.Contexts[1].Role != kubesphere.RoleNone || rep.Contexts[1].Cluster != "member1" {
		t.Errorf("contexts = %+v", rep.Contexts)
	}
}
