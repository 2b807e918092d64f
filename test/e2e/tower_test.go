//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// TestJoinTower is the default path on a KubeSphere whose host keeps its own Tower: init-host with
// a load balancer (no flag needed), join with --tunnel=auto rendering KubeSphere's agent, and the
// member Ready. The stand-in's Tower "connects" an agent only when its --name, --token and
// --proxy-server match the host, so the rendered Deployment is checked against what Tower needs.
func TestJoinTower(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1"}})
	host, member := s.Cluster("host"), s.Cluster("member1")
	ctx := context.Background()
	if err := host.SetKnobs(ctx, map[string]string{fakeks.KnobLoadBalancer: "true", fakeks.KnobInstallerDelay: "500ms"}); err != nil {
		t.Fatal(err)
	}
	if err := member.SetKnobs(ctx, map[string]string{fakeks.KnobInstallerDelay: "500ms"}); err != nil {
		t.Fatal(err)
	}
	var outs outputs
	if r := outs.add(ksmc(t, s, "init-host", "--context", "host", "--timeout", "3m")); r.code != 0 {
		t.Fatalf("init-host: %s", r)
	}
	lb := "http://" + host.NodeIP + ":8080"
	if r := outs.add(ksmc(t, s, "join", "--context", "member1", "--host-context", "host", "--timeout", "3m", "-o", "json")); r.code != 0 {
		t.Fatalf("join: %s", r)
	} else {
		var res map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("join -o json: %v\n%s", err, r.stdout)
		}
		if !strings.Contains(r.stdout, "tower") {
			t.Errorf("join result does not name the tower tunnel:\n%s", r.stdout)
		}
	}

	c := clusterObj(t, host, "member1")
	if c == nil || condition(c, "AgentAvailable") != "True" || condition(c, "Ready") != "True" {
		t.Fatalf("Cluster member1 not connected and ready: %v", c)
	}
	token, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
	d, err := kube(t, member).AppsV1().Deployments(fakeks.Namespace).Get(ctx, "cluster-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	if ctr.Image != fakeks.TowerImage || d.Spec.Template.Spec.ServiceAccountName != "kubesphere" {
		t.Errorf("agent image %q, service account %q", ctr.Image, d.Spec.Template.Spec.ServiceAccountName)
	}
	for _, want := range []string{"/agent", "--name=member1", "--token=" + token, "--proxy-server=" + lb, "--keepalive=10s",
		"--kubesphere-service=ks-apiserver.kubesphere-system.svc:80", "--kubernetes-service=kubernetes.default.svc:443"} {
		if !slices.Contains(ctr.Command, want) {
			t.Errorf("agent command lacks %q: %q", strings.Split(want, "=")[0], redactTokens(ctr.Command))
		}
	}
	if uid, _, _ := unstructured.NestedString(c.Object, "status", "uid"); uid == "" {
		t.Error("status.uid not set by the cluster controller")
	}
	// Re-running join changes nothing.
	if r := outs.add(ksmc(t, s, "join", "--context", "member1", "--host-context", "host", "-o", "json")); r.code != 0 || strings.Contains(r.stdout, `"changed": true`) {
		t.Fatalf("re-run: %s", r)
	}
	if r := outs.add(ksmc(t, s, "status", "--host-context", "host")); r.code != 0 || !strings.Contains(r.stdout, "member1") {
		t.Fatalf("status: %s", r)
	}
	outs.assertNoSecret(t, "host jwtSecret", jwtOf(t, host))
}

// redactTokens hides --token values in a failure message.
func redactTokens(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		if strings.HasPrefix(a, "--token=") {
			out[i] = "--token=<redacted>"
		}
	}
	return out
}
