//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// outputs collects the output of every command a test runs, to assert at the end that a secret
// never appeared in any of it.
type outputs struct {
	mu  sync.Mutex
	all []string
}

func (o *outputs) add(r result) result {
	o.mu.Lock()
	o.all = append(o.all, r.stdout, r.stderr)
	o.mu.Unlock()
	return r
}

func (o *outputs) assertNoSecret(t *testing.T, what, secret string) {
	t.Helper()
	if len(secret) < 8 {
		t.Fatalf("%s: implausible secret (len %d): the test cannot check for it", what, len(secret))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.all {
		if strings.Contains(s, secret) {
			t.Fatalf("the %s appears in a command's output:\n%s", what, s)
		}
	}
}

func dyn(t *testing.T, c *sandbox.Cluster) dynamic.Interface {
	t.Helper()
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	return dynamic.NewForConfigOrDie(cfg)
}

func kube(t *testing.T, c *sandbox.Cluster) kubernetes.Interface {
	t.Helper()
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func jwtOf(t *testing.T, c *sandbox.Cluster) string {
	t.Helper()
	cm, err := kube(t, c).CoreV1().ConfigMaps(fakeks.Namespace).Get(context.Background(), fakeks.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data[fakeks.ConfigKey]), &cfg); err != nil {
		t.Fatal(err)
	}
	s, _, _ := unstructured.NestedString(cfg, "authentication", "jwtSecret")
	return s
}

func ccOf(t *testing.T, c *sandbox.Cluster) *unstructured.Unstructured {
	t.Helper()
	cc, err := dyn(t, c).Resource(fakeks.CCGVR).Namespace(fakeks.Namespace).Get(context.Background(), fakeks.CCName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

func clusterObj(t *testing.T, host *sandbox.Cluster, name string) *unstructured.Unstructured {
	t.Helper()
	c, err := dyn(t, host).Resource(fakeks.ClusterGVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return c
}

func condition(c *unstructured.Unstructured, typ string) string {
	conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	for _, raw := range conds {
		if m, ok := raw.(map[string]any); ok && m["type"] == typ {
			s, _ := m["status"].(string)
			return s
		}
	}
	return ""
}

func agentExists(t *testing.T, c *sandbox.Cluster) bool {
	_, err := kube(t, c).AppsV1().Deployments(fakeks.Namespace).Get(context.Background(), "cluster-agent", metav1.GetOptions{})
	return err == nil
}

// isolationAvailable reports whether members can be put in network namespaces.
func isolationAvailable() bool {
	if os.Geteuid() != 0 {
		return false
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			return false
		}
	}
	return true
}

// TestJoin: host + two members through the bundled tunnel, with the negative cases of issue 5.
func TestJoin(t *testing.T) {
	opts := sandbox.Options{Clusters: []string{"host", "member1", "member2"}}
	isolated := isolationAvailable()
	if isolated {
		opts.Isolated = []string{"member1", "member2"}
	} else {
		t.Log("network isolation unavailable (needs root, ip, nft): members are reachable from the host directly")
	}
	s := newSandbox(t, opts)
	host, m1, m2 := s.Cluster("host"), s.Cluster("member1"), s.Cluster("member2")
	out := &outputs{}
	run := func(args ...string) result { return out.add(ksmc(t, s, args...)) }
	hostJWT := jwtOf(t, host)
	memberJWTs := []string{jwtOf(t, m1), jwtOf(t, m2)}

	t.Run("wrong host role", func(t *testing.T) {
		r := run("join", "--context", "member1", "--host-context", "member2", "--timeout", "1m")
		if r.code == 0 || !strings.Contains(r.stderr, "not host") || !strings.Contains(r.stderr, "kubectl ks-mc init-host --context member2") {
			t.Fatalf("want a refusal that advises init-host:\n%s", r)
		}
		if role, _, _ := unstructured.NestedString(ccOf(t, m1).Object, "spec", "multicluster", "clusterRole"); role != "none" {
			t.Errorf("member1 role changed to %q by a failed preflight", role)
		}
	})

	t.Run("non-TTY without host", func(t *testing.T) {
		r := run("join", "--context", "member1")
		if r.code == 0 || !strings.Contains(r.stderr, "--host-context") {
			t.Fatalf("want an error naming --host-context:\n%s", r)
		}
	})

	// The host, with the bundled proxy published on its node IP. It serves TLS on that port, so the
	// address is https:// (init-host refuses http:// without --allow-plaintext-agents).
	proxyAddr := fmt.Sprintf("https://%s:8080", host.NodeIP)
	plainAddr := fmt.Sprintf("http://%s:8080", host.NodeIP)
	ccBefore := ccOf(t, host).GetResourceVersion()
	if r := run("init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", plainAddr, "--timeout", "5m"); r.code == 0 ||
		!strings.Contains(r.stderr, "--proxy-publish-address="+proxyAddr) || !strings.Contains(r.stderr, "--allow-plaintext-agents") {
		t.Fatalf("init-host --tunnel=ks-mc with an http:// address: want a refusal naming https and --allow-plaintext-agents:\n%s", r)
	}
	if ccOf(t, host).GetResourceVersion() != ccBefore {
		t.Fatal("the refused init-host changed the ClusterConfiguration")
	}
	r := run("init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", proxyAddr, "--timeout", "5m")
	if r.code != 0 {
		t.Fatalf("init-host: %s", r)
	}

	t.Run("plaintext agent refused by the rendered proxy", func(t *testing.T) {
		tok := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tok, []byte(strings.Repeat("0", 64)), 0o600); err != nil {
			t.Fatal(err)
		}
		a := startKSMC(t, nil, "agent", "--kubeconfig", s.Kubeconfig, "--context", "member1", "--name", "member1",
			"--proxy-server", plainAddr, "--token-file", tok, "--keepalive", "2s", "--keepalive-timeout", "3s")
		eventually(t, 30*time.Second, "the plaintext agent refused", func() error {
			if !strings.Contains(a.output(), "agents must connect over https") {
				return fmt.Errorf("%s", tail(a.output(), 5))
			}
			return nil
		})
		a.kill9()
		if !strings.Contains(a.output(), "403") {
			t.Errorf("agent error does not say 403:\n%s", tail(a.output(), 5))
		}
	})

	t.Run("dry run changes nothing", func(t *testing.T) {
		before := ccOf(t, m1).GetResourceVersion()
		r := run("join", "--context", "member1", "--host-context", "host", "--dry-run=client", "-o", "yaml")
		if r.code != 0 {
			t.Fatal(r)
		}
		for _, want := range []string{"kind: Cluster", "kind: ClusterConfiguration", "jwtSecret: <redacted>", "kind: Deployment", "kind: Secret", "# host host:", "# member member1:"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("dry-run output lacks %q:\n%s", want, r.stdout)
			}
		}
		if ccOf(t, m1).GetResourceVersion() != before || clusterObj(t, host, "member1") != nil || agentExists(t, m1) {
			t.Error("--dry-run=client changed a cluster")
		}
		r = run("join", "--context", "member1", "--host-context", "host", "--dry-run=server", "-o", "json")
		if r.code != 0 {
			t.Fatal(r)
		}
		if ccOf(t, m1).GetResourceVersion() != before || clusterObj(t, host, "member1") != nil || agentExists(t, m1) {
			t.Error("--dry-run=server changed a cluster")
		}
	})

	t.Run("two members in parallel", func(t *testing.T) {
		var wg sync.WaitGroup
		res := make([]result, 2)
		for i, m := range []string{"member1", "member2"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i] = out.add(ksmc(t, s, "join", "--context", m, "--host-context", "host", "--timeout", "5m", "--group", "e2e"))
			}()
		}
		wg.Wait()
		for i, r := range res {
			if r.code != 0 {
				t.Fatalf("join member%d: %s", i+1, r)
			}
		}
		for _, m := range []*sandbox.Cluster{m1, m2} {
			c := clusterObj(t, host, m.Name)
			if c == nil || condition(c, "Ready") != "True" || condition(c, "AgentAvailable") != "True" {
				t.Fatalf("Cluster %s not Ready: %v", m.Name, c)
			}
			if jwtOf(t, m) != hostJWT {
				t.Errorf("%s: jwtSecret is not the host's", m.Name)
			}
			cc := ccOf(t, m)
			if role, _, _ := unstructured.NestedString(cc.Object, "spec", "multicluster", "clusterRole"); role != "member" {
				t.Errorf("%s: role %q", m.Name, role)
			}
			ns, _ := kube(t, m).CoreV1().Namespaces().Get(context.Background(), "kube-system", metav1.GetOptions{})
			if uid, _, _ := unstructured.NestedString(c.Object, "status", "uid"); uid != string(ns.UID) {
				t.Errorf("%s: status.uid %q, kube-system %q", m.Name, uid, ns.UID)
			}
		}
	})

	t.Run("host reaches members through the tunnel", func(t *testing.T) {
		for _, m := range []*sandbox.Cluster{m1, m2} {
			path := filepath.Join(t.TempDir(), m.Name+".kubeconfig")
			if err := s.WriteTunnelKubeconfig(context.Background(), host, m.Name, path); err != nil {
				t.Fatal(err)
			}
			cfg, err := clientcmd.BuildConfigFromFlags("", path)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Timeout = 15 * time.Second
			cs := kubernetes.NewForConfigOrDie(cfg)
			ns, err := cs.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatalf("%s: list namespaces through the tunnel: %v", m.Name, err)
			}
			direct, _ := kube(t, m).CoreV1().Namespaces().Get(context.Background(), "kube-system", metav1.GetOptions{})
			found := false
			for _, n := range ns.Items {
				found = found || n.UID == direct.UID
			}
			if !found {
				t.Errorf("%s: the tunnel reached another cluster (kube-system UID differs)", m.Name)
			}
			// A watch through the tunnel sees a change made on the member.
			wcfg := *cfg
			wcfg.Timeout = 0
			w, err := kubernetes.NewForConfigOrDie(&wcfg).CoreV1().ConfigMaps("default").Watch(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatalf("%s: watch through the tunnel: %v", m.Name, err)
			}
			kubectl(t, s, "--context", m.Name, "-n", "default", "create", "configmap", "tunnel-watch")
			seen := false
			timeout := time.After(20 * time.Second)
			for !seen {
				select {
				case ev, ok := <-w.ResultChan():
					if !ok {
						t.Fatalf("%s: watch closed", m.Name)
					}
					if ev.Type == watch.Added {
						if cm, ok := ev.Object.(interface{ GetName() string }); ok && cm.GetName() == "tunnel-watch" {
							seen = true
						}
					}
				case <-timeout:
					t.Fatalf("%s: the watch through the tunnel did not see the new ConfigMap", m.Name)
				}
			}
			w.Stop()
			if isolated {
				if err := dialFrom(host.Netns, hostPort(t, m.Server)); err == nil {
					t.Errorf("the host reached %s's apiserver directly: the tunnel test proves nothing", m.Name)
				}
			}
		}
	})

	t.Run("re-run is a no-op", func(t *testing.T) {
		c := clusterObj(t, host, "member1")
		d, _ := kube(t, m1).AppsV1().Deployments(fakeks.Namespace).Get(context.Background(), "cluster-agent", metav1.GetOptions{})
		cc := ccOf(t, m1)
		// The host from a kubeconfig file of its own (--host-kubeconfig, its current context), and
		// the highest verbosity: request bodies hold the jwtSecret, so -v must be capped.
		hostOnly := filepath.Join(t.TempDir(), "host.kubeconfig")
		hk := kubectl(t, s, "config", "view", "--minify", "--flatten", "--context", "host")
		if hk.code != 0 || os.WriteFile(hostOnly, []byte(hk.stdout), 0o600) != nil {
			t.Fatalf("write the host's kubeconfig: %s", hk)
		}
		r := run("join", "--context", "member1", "--host-kubeconfig", hostOnly, "--timeout", "2m", "--group", "e2e", "-v=9")
		if r.code != 0 || !strings.Contains(r.stdout, "none (already joined)") || !strings.Contains(r.stderr, "-v capped at 7") {
			t.Fatalf("re-run: %s", r)
		}
		d2, _ := kube(t, m1).AppsV1().Deployments(fakeks.Namespace).Get(context.Background(), "cluster-agent", metav1.GetOptions{})
		if d2.Generation != d.Generation || ccOf(t, m1).GetGeneration() != cc.GetGeneration() {
			t.Error("re-run changed the agent or the member's ClusterConfiguration")
		}
		if spec1, spec2 := mustJSON(c.Object["spec"]), mustJSON(clusterObj(t, host, "member1").Object["spec"]); spec1 != spec2 {
			t.Errorf("re-run changed the Cluster spec:\n%s\n%s", spec1, spec2)
		}
	})

	t.Run("duplicate UID", func(t *testing.T) {
		r := run("join", "--context", "member1", "--host-context", "host", "--name", "member1-again", "--timeout", "1m")
		if r.code == 0 || !strings.Contains(r.stderr, `is already Cluster "member1"`) {
			t.Fatalf("want a duplicate refusal:\n%s", r)
		}
		if clusterObj(t, host, "member1-again") != nil {
			t.Error("a duplicate Cluster was created")
		}
	})

	t.Run("status", func(t *testing.T) {
		r := run("status", "--host-context", "host", "--context", "member1", "-o", "json")
		if r.code != 0 {
			t.Fatal(r)
		}
		var st struct {
			Clusters []struct{ Name, Role, Agent, Ready string }
			Contexts []struct{ Context, Role, Cluster string }
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("%v\n%s", err, r.stdout)
		}
		got := map[string]string{}
		for _, c := range st.Clusters {
			got[c.Name] = c.Role + "/" + c.Agent + "/" + c.Ready
		}
		if got["member1"] != "member/Connected/True" || got["member2"] != "member/Connected/True" || !strings.HasPrefix(got["host"], "host/") {
			t.Errorf("status rows = %v", got)
		}
		roles := map[string]string{}
		for _, c := range st.Contexts {
			roles[c.Context] = c.Role + "/" + c.Cluster
		}
		if roles["host"] != "host/host" || roles["member1"] != "member/member1" {
			t.Errorf("context roles = %v", roles)
		}
		if r := run("status", "--host-context", "host"); r.code != 0 || !strings.Contains(r.stdout, "member2") {
			t.Errorf("table: %s", r)
		}
	})

	t.Run("unjoin removes what join created and nothing else", func(t *testing.T) {
		r := run("unjoin", "--context", "member2", "--host-context", "host")
		if r.code != 0 {
			t.Fatal(r)
		}
		if clusterObj(t, host, "member2") != nil {
			t.Error("Cluster member2 still exists")
		}
		if agentExists(t, m2) {
			t.Error("the agent still runs on member2")
		}
		if _, err := kube(t, m2).CoreV1().Secrets(fakeks.Namespace).Get(context.Background(), "cluster-agent-token", metav1.GetOptions{}); err == nil {
			t.Error("the agent token Secret is left on member2")
		}
		c := clusterObj(t, host, "member1")
		if c == nil || condition(c, "Ready") != "True" || !agentExists(t, m1) {
			t.Error("unjoin of member2 disturbed member1")
		}
		for _, name := range []string{"ks-apiserver", "ks-controller-manager", "ks-installer"} {
			if _, err := kube(t, m2).AppsV1().Deployments(fakeks.Namespace).Get(context.Background(), name, metav1.GetOptions{}); err != nil {
				t.Errorf("unjoin removed %s from member2", name)
			}
		}
		if !strings.Contains(r.stdout, "left behind") {
			t.Errorf("unjoin does not say what is left behind:\n%s", r)
		}
		if r := run("unjoin", "--context", "member2", "--host-context", "host"); r.code != 0 || !strings.Contains(r.stdout, "Nothing to remove") {
			t.Errorf("second unjoin: %s", r)
		}
	})

	t.Run("plaintext proxy address refused", func(t *testing.T) {
		// An http:// address published behind init-host's back: join must not hand the token to
		// it, since the host's proxy was not rendered with --allow-plaintext-agents.
		patch := `{"spec":{"multicluster":{"proxyPublishAddress":"` + plainAddr + `"}}}`
		if r := kubectl(t, s, "--context", "host", "-n", "kubesphere-system", "patch", "cc", "ks-installer", "--type=merge", "-p", patch); r.code != 0 {
			t.Fatal(r)
		}
		eventually(t, time.Minute, "kubesphere-config shows the http address", func() error {
			cm, _ := kube(t, host).CoreV1().ConfigMaps(fakeks.Namespace).Get(context.Background(), fakeks.ConfigMapName, metav1.GetOptions{})
			if !strings.Contains(cm.Data[fakeks.ConfigKey], plainAddr) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		r := run("join", "--context", "member2", "--host-context", "host", "--timeout", "60s")
		if r.code == 0 || !strings.Contains(r.stderr, "is plain http") || !strings.Contains(r.stderr, "--proxy-publish-address "+proxyAddr) ||
			!strings.Contains(r.stderr, "--allow-plaintext-agents") {
			t.Fatalf("want a refusal naming https and --allow-plaintext-agents:\n%s", r)
		}
		if clusterObj(t, host, "member2") != nil || agentExists(t, m2) {
			t.Error("the refused join changed a cluster")
		}
	})

	t.Run("unreachable proxy address", func(t *testing.T) {
		// Publish an address nobody listens on, then join member2 with a short timeout.
		patch := `{"spec":{"multicluster":{"proxyPublishAddress":"https://` + host.NodeIP + `:1"}}}`
		if r := kubectl(t, s, "--context", "host", "-n", "kubesphere-system", "patch", "cc", "ks-installer", "--type=merge", "-p", patch); r.code != 0 {
			t.Fatal(r)
		}
		eventually(t, time.Minute, "kubesphere-config shows the bad address", func() error {
			cm, _ := kube(t, host).CoreV1().ConfigMaps(fakeks.Namespace).Get(context.Background(), fakeks.ConfigMapName, metav1.GetOptions{})
			if !strings.Contains(cm.Data[fakeks.ConfigKey], host.NodeIP+":1") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		r := run("join", "--context", "member2", "--host-context", "host", "--timeout", "60s")
		if r.code == 0 || !strings.Contains(r.stderr, "timed out") || !strings.Contains(r.stderr, "likeliest cause") || !strings.Contains(r.stderr, host.NodeIP+":1") {
			t.Fatalf("want a clear timeout naming the address:\n%s", r)
		}
		// Clean up for the secret check below: unjoin and restore the address.
		run("unjoin", "--context", "member2", "--host-context", "host")
		patch = `{"spec":{"multicluster":{"proxyPublishAddress":"` + proxyAddr + `"}}}`
		kubectl(t, s, "--context", "host", "-n", "kubesphere-system", "patch", "cc", "ks-installer", "--type=merge", "-p", patch)
	})

	out.assertNoSecret(t, "host's jwtSecret", hostJWT)
	for _, j := range memberJWTs {
		out.assertNoSecret(t, "member's original jwtSecret", j)
	}
	if c := clusterObj(t, host, "member1"); c != nil {
		if tok, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token"); tok != "" {
			out.assertNoSecret(t, "agent token", tok)
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
