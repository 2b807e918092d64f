//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// proc is a ks-mc process (proxy or agent) run by the test, with its output captured.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// kill9 ends the process without letting it drain.
func (p *proc) kill9() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) term() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		p.kill9()
	}
}

// startKSMC starts a process that lives until t ends (pass the parent test for processes that
// outlive a subtest).
func startKSMC(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + workDir}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.kill9()
		}
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", strings.Join(args[:1], " "), tail(p.output(), 40))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freeTCPPort(t *testing.T, ip string) int {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestTunnel runs `kubectl ks-mc proxy` (host kubeconfig) and `kubectl ks-mc agent` (member
// kubeconfig) as processes against real kube-apiservers and checks the Kubernetes-side contract,
// the refusals, a proxy crash and the Cluster's deletion.
func TestTunnel(t *testing.T) {
	outer := t
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1"}})
	host, member := s.Cluster("host"), s.Cluster("member1")
	ctx := context.Background()
	hostKube, memberKube := kube(t, host), kube(t, member)
	clusters := dyn(t, host).Resource(fakeks.ClusterGVR)

	port := freeTCPPort(t, host.NodeIP)
	metricsAddr := fmt.Sprintf("%s:%d", host.NodeIP, freeTCPPort(t, host.NodeIP))
	proxyArgs := []string{"proxy", "--kubeconfig", s.Kubeconfig, "--context", "host", "--metrics-bind-address", metricsAddr,
		"--bind-address", host.NodeIP, "--port", fmt.Sprint(port), "--keepalive", "2s", "--keepalive-timeout", "3s", "--drain-timeout", "3s"}
	proxy := startKSMC(t, nil, proxyArgs...)
	proxyURL := fmt.Sprintf("https://%s:%d", host.NodeIP, port)
	eventually(t, time.Minute, "proxy /health", func() error {
		// Plain HTTP on the TLS port, as a kubelet probe does it; the query string is allowed.
		resp, err := http.Get(fmt.Sprintf("http://%s:%d/health?probe=1", host.NodeIP, port))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "OK\n" {
			return fmt.Errorf("health: %d %q", resp.StatusCode, b)
		}
		return nil
	})

	// The console's Cluster: the proxy allocates port, token, Service, endpoints, Initialized.
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster",
		"metadata": map[string]any{"name": "member1"},
		"spec":     map[string]any{"provider": "kubesphere", "joinFederation": true, "connection": map[string]any{"type": "proxy"}},
	}}
	if _, err := clusters.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var token string
	var kport int64
	eventually(t, time.Minute, "Cluster initialized", func() error {
		c := clusterObj(t, host, "member1")
		if condition(c, "Initialized") != "True" || condition(c, "AgentAvailable") != "False" {
			return fmt.Errorf("conditions %v", c.Object["status"])
		}
		token, _, _ = unstructured.NestedString(c.Object, "spec", "connection", "token")
		kport, _, _ = unstructured.NestedInt64(c.Object, "spec", "connection", "kubernetesAPIServerPort")
		return nil
	})
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(token) {
		t.Fatal("token is not 64 hex digits")
	}
	c := clusterObj(t, host, "member1")
	ksport, _, _ := unstructured.NestedInt64(c.Object, "spec", "connection", "kubesphereAPIServerPort")
	if kport < 6000 || kport > 7000 || ksport != kport+10000 {
		t.Fatalf("ports %d/%d", kport, ksport)
	}
	svc, err := hostKube.CoreV1().Services(fakeks.Namespace).Get(ctx, "mc-member1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubernetesAPIEndpoint"); ep != "https://"+svc.Spec.ClusterIP+":6443" {
		t.Fatalf("kubernetesAPIEndpoint %q, ClusterIP %s", ep, svc.Spec.ClusterIP)
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Selector["app"] != "tower" || svc.Spec.Ports[0].TargetPort.IntVal != int32(kport) {
		t.Fatalf("Service %+v", svc.Spec)
	}
	sec, err := hostKube.CoreV1().Secrets(fakeks.Namespace).Get(ctx, "ks-mc-proxy-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pin := sec.Annotations["ks-mc.io/ca-cert-hash"]
	dir := t.TempDir()
	writeToken := func(name, tok string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodToken := writeToken("token", token)
	agentArgs := func(tokenFile, hash string) []string {
		return []string{"agent", "--kubeconfig", s.Kubeconfig, "--context", "member1", "--name", "member1",
			"--proxy-server", proxyURL, "--token-file", tokenFile, "--ca-cert-hash", hash, "--keepalive", "2s", "--keepalive-timeout", "3s"}
	}

	t.Run("wrong token refused, retried, never logged", func(t *testing.T) {
		bad := strings.Repeat("0", 64)
		a := startKSMC(t, nil, agentArgs(writeToken("bad", bad), pin)...)
		eventually(t, 30*time.Second, "two refusals", func() error {
			if n := strings.Count(a.output(), "agent token rejected"); n < 2 {
				return fmt.Errorf("%d refusals:\n%s", n, a.output())
			}
			return nil
		})
		select {
		case <-a.done:
			t.Fatal("the agent exited on an auth failure")
		default:
		}
		a.kill9()
		if !strings.Contains(a.output(), "401") {
			t.Errorf("agent error does not say 401:\n%s", tail(a.output(), 5))
		}
		if !strings.Contains(proxy.output(), `cluster="member1"`) || !strings.Contains(proxy.output(), "agent refused") {
			t.Errorf("proxy log does not name the cluster:\n%s", tail(proxy.output(), 10))
		}
		for _, out := range []string{a.output(), proxy.output()} {
			if strings.Contains(out, bad) || strings.Contains(out, token) {
				t.Fatal("a token appears in a log")
			}
		}
	})

	t.Run("plaintext agent refused by default", func(t *testing.T) {
		// The proxy runs without --allow-plaintext-agents: an agent dialling http:// (its token in
		// clear text) is refused, whatever its token.
		a := startKSMC(t, nil, "agent", "--kubeconfig", s.Kubeconfig, "--context", "member1", "--name", "member1",
			"--proxy-server", fmt.Sprintf("http://%s:%d", host.NodeIP, port), "--token-file", goodToken, "--keepalive", "2s", "--keepalive-timeout", "3s")
		eventually(t, 30*time.Second, "the plaintext refusal", func() error {
			if !strings.Contains(a.output(), "agents must connect over https") {
				return fmt.Errorf("%s", tail(a.output(), 5))
			}
			return nil
		})
		a.kill9()
		if strings.Contains(a.output(), "connected to proxy") || !strings.Contains(proxy.output(), "agent refused: plaintext connection") {
			t.Errorf("agent:\n%s\nproxy:\n%s", tail(a.output(), 5), tail(proxy.output(), 10))
		}
		if strings.Contains(a.output()+proxy.output(), token) {
			t.Fatal("a token appears in a log")
		}
	})

	t.Run("wrong CA pin refused with an x509 error", func(t *testing.T) {
		a := startKSMC(t, nil, agentArgs(goodToken, "sha256:"+strings.Repeat("ab", 32))...)
		eventually(t, 30*time.Second, "pin refusal", func() error {
			if !strings.Contains(a.output(), "x509: proxy certificate does not chain to the pinned CA") {
				return fmt.Errorf("%s", tail(a.output(), 5))
			}
			return nil
		})
		a.kill9()
		if !strings.Contains(a.output(), pin) {
			t.Errorf("the error does not name the CA the proxy presented:\n%s", tail(a.output(), 3))
		}
	})

	agent := startKSMC(t, nil, agentArgs(goodToken, pin)...)
	eventually(t, time.Minute, "AgentAvailable=True and kubeconfig", func() error {
		c := clusterObj(t, host, "member1")
		kc, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
		if condition(c, "AgentAvailable") != "True" || kc == "" {
			return fmt.Errorf("AgentAvailable %q, kubeconfig set %v", condition(c, "AgentAvailable"), kc != "")
		}
		return nil
	})
	kcPath := filepath.Join(dir, "member1-tunnel.kubeconfig")
	if err := s.WriteTunnelKubeconfig(ctx, host, "member1", kcPath); err != nil {
		t.Fatal(err)
	}
	tunnelClient := func(t *testing.T) kubernetes.Interface {
		cfg, err := clientcmd.BuildConfigFromFlags("", kcPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Timeout = 5 * time.Second
		return kubernetes.NewForConfigOrDie(cfg)
	}

	t.Run("kubectl lists the member's namespaces and streams a watch", func(t *testing.T) {
		r := runCmd(t, nil, "kubectl", "--kubeconfig", kcPath, "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}")
		want, err := memberKube.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.code != 0 || r.stdout != string(want.UID) {
			t.Fatalf("kube-system through the tunnel is not the member's (want %s): %s", want.UID, r)
		}
		w := exec.Command("kubectl", "--kubeconfig", kcPath, "get", "configmaps", "-n", "default", "--watch", "-o", "name")
		var out syncBuf
		w.Stdout, w.Stderr = &out, &out
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = w.Process.Kill(); _ = w.Wait() }()
		time.Sleep(time.Second)
		if _, err := memberKube.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "through-the-tunnel"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "watch event", func() error {
			if !strings.Contains(out.String(), "configmap/through-the-tunnel") {
				return fmt.Errorf("watch output: %q", out.String())
			}
			return nil
		})
	})

	t.Run("a large LIST through the tunnel is byte-identical to a direct one, with and without gzip", func(t *testing.T) {
		directCfg, err := member.RESTConfig()
		if err != nil {
			t.Fatal(err)
		}
		tunnelCfg, err := clientcmd.BuildConfigFromFlags("", kcPath)
		if err != nil {
			t.Fatal(err)
		}
		checkTunnelTransparency(t, memberKube, directCfg, tunnelCfg)
	})

	t.Run("no client certificate refused clearly", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", kcPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg.CertData, cfg.KeyData = nil, nil
		_, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if !apierrors.IsUnauthorized(err) || !strings.Contains(err.Error(), "client certificate issued by the proxy CA") {
			t.Fatalf("want a clear 401: %v", err)
		}
		// A bearer token instead of the certificate is passed through: the member's apiserver
		// judges it (and refuses this one).
		cfg.BearerToken = "not-a-member-token"
		_, err = kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if !apierrors.IsUnauthorized(err) || strings.Contains(err.Error(), "proxy CA") {
			t.Fatalf("want the member apiserver's 401: %v", err)
		}
	})

	t.Run("kill -9 the proxy and restart it", func(t *testing.T) {
		proxy.kill9()
		time.Sleep(3 * time.Second)
		start := time.Now()
		proxy = startKSMC(outer, nil, proxyArgs...)
		eventually(t, 2*time.Minute, "request through the restarted proxy", func() error {
			_, err := tunnelClient(t).CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
			return err
		})
		t.Logf("proxy restart → first successful request through the tunnel: %s", time.Since(start).Round(time.Millisecond))
		if condition(clusterObj(t, host, "member1"), "AgentAvailable") != "True" {
			t.Error("AgentAvailable is not True after the agent came back")
		}
	})

	t.Run("agent SIGTERM: AgentAvailable=False, listener gone", func(t *testing.T) {
		agent.term()
		eventually(t, time.Minute, "AgentAvailable=False", func() error {
			if s := condition(clusterObj(t, host, "member1"), "AgentAvailable"); s != "False" {
				return fmt.Errorf("AgentAvailable %q", s)
			}
			return nil
		})
		if conn, err := net.DialTimeout("tcp", net.JoinHostPort(host.NodeIP, fmt.Sprint(kport)), time.Second); err == nil {
			conn.Close()
			t.Fatal("the per-cluster listener is still open without an agent")
		}
		agent = startKSMC(outer, nil, agentArgs(goodToken, pin)...)
		eventually(t, time.Minute, "agent back", func() error {
			_, err := tunnelClient(t).CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
			return err
		})
	})

	t.Run("rotating the token closes the old session within 5 s", func(t *testing.T) {
		// The proxy's /metrics (plain HTTP on --metrics-bind-address) shows the session count.
		metrics := func() string {
			resp, err := http.Get("http://" + metricsAddr + "/metrics")
			if err != nil {
				return ""
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return string(b)
		}
		connected := `ksmc_proxy_agents{cluster="member1"} 1`
		eventually(t, time.Minute, "agent connected", func() error {
			if !strings.Contains(metrics(), connected) {
				return fmt.Errorf("no agent session")
			}
			return nil
		})
		newToken := strings.Repeat("5a", 32)
		patch := fmt.Sprintf(`{"spec":{"connection":{"token":%q}}}`, newToken)
		start := time.Now()
		if _, err := clusters.Patch(ctx, "member1", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		var closedAfter time.Duration
		eventually(t, 30*time.Second, "old session closed", func() error {
			m := metrics()
			if strings.Contains(m, connected) || !strings.Contains(m, `ksmc_proxy_revoked_sessions_total{reason="token_changed"}`) {
				return fmt.Errorf("old session still up")
			}
			closedAfter = time.Since(start)
			return nil
		})
		t.Logf("token rotated → old agent session closed: %s", closedAfter.Round(time.Millisecond))
		if closedAfter > 5*time.Second {
			t.Errorf("the old session outlived the rotation by %s (want ≤ 5 s)", closedAfter)
		}
		// The agent with the old token stays out; with the new one (the token file is re-read) it
		// is back.
		eventually(t, 30*time.Second, "agent refused with the old token", func() error {
			if !strings.Contains(agent.output(), "401") {
				return fmt.Errorf("no 401 in the agent's log yet")
			}
			return nil
		})
		if strings.Contains(agent.output(), newToken) || strings.Contains(proxy.output(), newToken) {
			t.Fatal("a token appears in a log")
		}
		writeToken("token", newToken)
		eventually(t, time.Minute, "agent back with the new token", func() error {
			_, err := tunnelClient(t).CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
			return err
		})
	})

	t.Run("deleting the Cluster removes its Service and listeners", func(t *testing.T) {
		if err := clusters.Delete(ctx, "member1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "Service removed", func() error {
			_, err := hostKube.CoreV1().Services(fakeks.Namespace).Get(ctx, "mc-member1", metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("Service still there: %v", err)
			}
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(host.NodeIP, fmt.Sprint(kport)), time.Second)
			if err == nil {
				conn.Close()
				return fmt.Errorf("listener still open")
			}
			return nil
		})
	})
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
