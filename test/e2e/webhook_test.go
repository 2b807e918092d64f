//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// TestUnjoinThroughClusterWebhook runs join → unjoin through KubeSphere 3.4's validating webhook
// on Cluster UPDATE (the stand-in serves it as KubeSphere v3.4.1 does) with both tunnels, then
// `unjoin --force` of a member whose control plane is gone.
func TestUnjoinThroughClusterWebhook(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1", "member2"}})
	host, m1, m2 := s.Cluster("host"), s.Cluster("member1"), s.Cluster("member2")
	ctx := context.Background()
	if err := host.SetKnobs(ctx, map[string]string{fakeks.KnobLoadBalancer: "true", fakeks.KnobInstallerDelay: "500ms"}); err != nil {
		t.Fatal(err)
	}
	var outs outputs
	run := func(args ...string) result { return outs.add(ksmc(t, s, args...)) }

	// The webhook is there, as ks-installer v3.4.1 configures it.
	eventually(t, time.Minute, "ValidatingWebhookConfiguration cluster.kubesphere.io", func() error {
		v, err := kube(t, host).AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, fakeks.ClusterWebhookConfigName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		h := v.Webhooks[0]
		if string(*h.FailurePolicy) != "Fail" || h.ClientConfig.URL == nil || len(h.ClientConfig.CABundle) == 0 || h.Rules[0].Operations[0] != "UPDATE" {
			return fmt.Errorf("unexpected %+v", h)
		}
		return nil
	})

	// proveWebhook: once status.uid is set, an update carrying another cluster's kubeconfig is refused.
	proveWebhook := func(t *testing.T, name string) {
		t.Helper()
		eventually(t, time.Minute, "status.uid of "+name, func() error {
			if uid, _, _ := unstructured.NestedString(clusterObj(t, host, name).Object, "status", "uid"); uid == "" {
				return fmt.Errorf("no status.uid yet")
			}
			return nil
		})
		other, err := os.ReadFile(s.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		patch := `{"spec":{"connection":{"kubeconfig":"` + base64.StdEncoding.EncodeToString(other) + `"}}}`
		r := kubectl(t, s, "--context", "host", "patch", "clusters.cluster.kubesphere.io", name, "--type=merge", "-p", patch)
		if r.code == 0 || !strings.Contains(r.stderr, "validating-cluster.kubesphere.io") {
			t.Fatalf("the webhook did not refuse another cluster's kubeconfig:\n%s", r)
		}
	}
	unjoin := func(t *testing.T, member *sandbox.Cluster) {
		t.Helper()
		start := time.Now()
		r := run("unjoin", "--context", member.Name, "--host-context", "host", "--timeout", "2m")
		took := time.Since(start)
		if r.code != 0 {
			t.Fatalf("unjoin through the webhook: %s", r)
		}
		if clusterObj(t, host, member.Name) != nil || agentExists(t, member) {
			t.Fatal("the Cluster or the agent is left")
		}
		fmt.Printf("FIGURE %s: unjoin %s through the Cluster webhook: Cluster gone and agent removed in %s\n", t.Name(), member.Name, took.Round(10*time.Millisecond))
	}

	t.Run("tower", func(t *testing.T) {
		if r := run("init-host", "--context", "host", "--timeout", "3m"); r.code != 0 {
			t.Fatalf("init-host: %s", r)
		}
		if r := run("join", "--context", "member1", "--host-context", "host", "--timeout", "3m"); r.code != 0 {
			t.Fatalf("join: %s", r)
		}
		proveWebhook(t, "member1")
		unjoin(t, m1)

		// Switching the host to the ks-mc proxy keeps a Tower member connected (issue 12: the proxy
		// serves Tower agents; issue 9 refused the switch): init-host warns and goes on, and an
		// unjoin of that member still passes the webhook, through its Tower agent on the ks-mc proxy.
		if r := run("join", "--context", "member1", "--host-context", "host", "--timeout", "3m"); r.code != 0 {
			t.Fatalf("join: %s", r)
		}
		proveWebhook(t, "member1")
		r := run("init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", fmt.Sprintf("https://%s:8080", host.NodeIP), "--timeout", "3m")
		if r.code != 0 || !strings.Contains(r.stderr, "member1 (agent connected)") || !strings.Contains(r.stderr, "they stay connected through the ks-mc proxy") {
			t.Fatalf("want init-host to switch, saying member1 stays connected:\n%s", r)
		}
		if d, err := kube(t, host).AppsV1().Deployments(fakeks.Namespace).Get(ctx, "tower", metav1.GetOptions{}); err != nil || strings.HasPrefix(d.Spec.Template.Spec.Containers[0].Image, "kubesphere/tower") {
			t.Fatalf("init-host did not switch Deployment tower to the ks-mc proxy: %v", err)
		}
		unjoin(t, m1)
	})

	proxyAddr := fmt.Sprintf("https://%s:8080", host.NodeIP)
	t.Run("ks-mc", func(t *testing.T) {
		if r := run("init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", proxyAddr, "--timeout", "5m"); r.code != 0 {
			t.Fatalf("init-host: %s", r)
		}
		if r := run("join", "--context", "member1", "--host-context", "host", "--timeout", "3m"); r.code != 0 {
			t.Fatalf("join: %s", r)
		}
		proveWebhook(t, "member1")
		unjoin(t, m1)
	})

	t.Run("force of a dead member", func(t *testing.T) {
		if r := run("join", "--context", "member2", "--host-context", "host", "--timeout", "3m"); r.code != 0 {
			t.Fatalf("join: %s", r)
		}
		proveWebhook(t, "member2")
		if err := s.StopCluster("member2"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r := run("unjoin", "--host-context", "host", "--name", "member2", "--force", "--timeout", "2m")
		took := time.Since(start)
		if r.code != 0 {
			t.Fatalf("unjoin --force: %s", r)
		}
		if clusterObj(t, host, "member2") != nil {
			t.Fatal("unjoin --force left the Cluster")
		}
		if !strings.Contains(r.stderr, "suspends ValidatingWebhookConfiguration cluster.kubesphere.io") {
			t.Errorf("the webhook suspension is not announced:\n%s", r)
		}
		v, err := kube(t, host).AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, fakeks.ClusterWebhookConfigName, metav1.GetOptions{})
		if err != nil || len(v.Webhooks) != 1 || v.Webhooks[0].Name != fakeks.ClusterWebhookName {
			t.Fatalf("the webhook is not restored: %v", err)
		}
		fmt.Printf("FIGURE %s: unjoin --force of a dead member: Cluster gone in %s\n", t.Name(), took.Round(10*time.Millisecond))
	})
	_ = m2
	outs.assertNoSecret(t, "host jwtSecret", jwtOf(t, host))
}
