package toweragent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
	"github.com/ks-mc/ks-mc/test/toweragent"
)

const (
	cluster   = "member1"
	token     = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	saToken   = "sa-token-of-the-agent"
	waitLimit = 20 * time.Second
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// env is a ks-mc proxy (plain TCP, the way Tower agents dial it), a fake member kube-apiserver
// (TLS; it reports who called) and ks-apiserver, and the per-cluster listeners.
type env struct {
	t        *testing.T
	proxy    *tunnel.Proxy
	addr     string
	kube, ks *httptest.Server
	ca       *tunnel.CA
	cl       *tunnel.ClusterListener
	admin    *http.Client
	saDir    string
	mu       sync.Mutex
	logs     []string
}

func who(r *http.Request) string {
	switch {
	case r.Header.Get("Authorization") == "Bearer "+saToken:
		return "agent-sa"
	case r.Header.Get("Authorization") != "":
		return "caller"
	case r.TLS != nil && len(r.TLS.PeerCertificates) > 0:
		return "cert:" + r.TLS.PeerCertificates[0].Subject.CommonName
	}
	return "anonymous"
}

func newEnv(t *testing.T, auth tunnel.Authenticator) *env {
	e := &env{t: t}
	kmux := http.NewServeMux()
	kmux.HandleFunc("/api/v1/namespaces/default", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Identity", who(r))
		fmt.Fprint(w, `{"kind":"Namespace"}`)
	})
	e.kube = httptest.NewUnstartedServer(kmux)
	e.kube.EnableHTTP2 = true
	e.kube.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	e.kube.StartTLS()
	e.ks = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Identity", who(r))
		fmt.Fprint(w, "kubesphere")
	}))
	t.Cleanup(func() { e.kube.Close(); e.ks.Close() })
	ca, err := tunnel.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	e.ca = ca
	if auth == nil {
		auth = tunnel.StaticAuthenticator{cluster: token}
	}
	pc := tunnel.DefaultProxyConfig()
	pc.Config.KeepAliveInterval, pc.Config.KeepAliveTimeout = 200*time.Millisecond, time.Second
	pc.Authenticator, pc.AllowPlaintextAgents = auth, true
	p, err := tunnel.NewProxy(pc)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Serve(ln) }()
	t.Cleanup(func() { _ = ln.Close(); _ = p.Shutdown(context.Background()) })
	e.proxy, e.addr = p, ln.Addr().String()
	rc, err := tunnel.NewRenewingCert(ca, "kubernetes", []string{"kubernetes"}, []net.IP{net.ParseIP("127.0.0.1")}, tunnel.ServingValidity)
	if err != nil {
		t.Fatal(err)
	}
	e.cl, err = tunnel.ListenCluster(tunnel.ClusterListenerConfig{Cluster: cluster, BindAddress: "127.0.0.1",
		TLS: rc.ServerTLS(ca.Pool()), Dialer: p})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.cl.Close() })
	certPEM, keyPEM, err := ca.IssueClusterClient(cluster, "kubernetes-admin", []string{"system:masters"}, tunnel.ClientValidity)
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.X509KeyPair(certPEM, keyPEM)
	e.admin = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(),
		Certificates: []tls.Certificate{pair}, ServerName: "kubernetes"}}}
	t.Cleanup(e.admin.CloseIdleConnections)
	e.saDir = t.TempDir()
	_ = os.WriteFile(filepath.Join(e.saDir, "token"), []byte(saToken), 0o600)
	_ = os.WriteFile(filepath.Join(e.saDir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.kube.Certificate().Raw}), 0o600)
	return e
}

// options are what KubeSphere's agent Deployment passes (--name, --token, --proxy-server,
// --keepalive, --kubesphere-service, --kubernetes-service), in-cluster.
func (e *env) options() toweragent.Options {
	o := toweragent.DefaultOptions()
	o.Name, o.Token, o.Server, o.KeepAlive = cluster, token, "http://"+e.addr, 100*time.Millisecond
	o.KubesphereApiserverSvc = strings.TrimPrefix(e.ks.URL, "http://")
	o.KubernetesApiserverSvc = "kubernetes.default.svc:443"
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(e.kube.URL, "https://"))
	o.ServiceAccountDir = e.saDir
	o.Getenv = func(k string) string {
		return map[string]string{"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}[k]
	}
	o.Logf = func(f string, a ...any) {
		e.mu.Lock()
		e.logs = append(e.logs, fmt.Sprintf(f, a...))
		e.mu.Unlock()
	}
	return o
}

func (e *env) logged(s string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, l := range e.logs {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

type running struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, o toweragent.Options) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- toweragent.Run(ctx, o) }()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

func (e *env) get(path string) (*http.Response, string) {
	e.t.Helper()
	resp, err := e.admin.Get("https://" + e.cl.KubeAddr().String() + path)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// TestTowerAgentThroughProxy: the Tower agent (as KubeSphere deploys it) connects to the ks-mc
// proxy over ws://, and requests through the per-cluster listeners reach the member's
// kube-apiserver with the agent's service-account token and ks-apiserver untouched.
func TestTowerAgentThroughProxy(t *testing.T) {
	e := newEnv(t, nil)
	start(t, e.options())
	waitFor(t, "tower agent connected", func() bool { return e.proxy.TowerAgents(cluster) == 1 })
	if p := e.proxy.Protocol(cluster); p != tunnel.ProtocolTower {
		t.Fatalf("protocol %q", p)
	}
	resp, body := e.get("/api/v1/namespaces/default")
	if resp.StatusCode != 200 || resp.Header.Get("X-Identity") != "agent-sa" || !strings.Contains(body, "Namespace") {
		t.Fatalf("kube request: %s %q as %q", resp.Status, body, resp.Header.Get("X-Identity"))
	}
	r, err := http.Get("http://" + e.cl.KubeSphereAddr().String() + "/kapis/version")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if string(b) != "kubesphere" || r.Header.Get("X-Identity") != "anonymous" {
		t.Fatalf("ks request: %q as %q", b, r.Header.Get("X-Identity"))
	}
	if !e.logged("Connected (Latency") {
		t.Fatalf("agent log: %v", e.logs)
	}
	for _, l := range e.logs {
		if strings.Contains(l, token) || strings.Contains(l, saToken) {
			t.Fatalf("a token in the agent log: %q", l)
		}
	}
}

// TestTowerAgentKubeconfig: with --kubeconfig the agent sends the kubeconfig's host, CA and client
// certificate (Tower's rules); the proxy authenticates to the kube-apiserver with that certificate.
func TestTowerAgentKubeconfig(t *testing.T) {
	e := newEnv(t, nil)
	clientCA, _ := tunnel.NewCA("member CA")
	certPEM, keyPEM, err := clientCA.IssueClient("tower-agent", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: m, cluster: {server: %q, certificate-authority-data: %q}}]
users: [{name: a, user: {client-certificate-data: %q, client-key-data: %q}}]
contexts: [{name: m, context: {cluster: m, user: a}}]
current-context: m
`, e.kube.URL, b64(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.kube.Certificate().Raw})), b64(certPEM), b64(keyPEM))
	path := filepath.Join(t.TempDir(), "kubeconfig")
	_ = os.WriteFile(path, []byte(kc), 0o600)
	o := e.options()
	o.Kubeconfig, o.Getenv, o.ServiceAccountDir = path, func(string) string { return "" }, "/nonexistent"
	conf, err := toweragent.BuildConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	if conf.KubernetesSvcHost != strings.TrimPrefix(e.kube.URL, "https://") || len(conf.CertData) == 0 || len(conf.BearerToken) != 0 {
		t.Fatalf("config from kubeconfig: %+v", conf)
	}
	start(t, o)
	waitFor(t, "tower agent connected", func() bool { return e.proxy.TowerAgents(cluster) == 1 })
	resp, _ := e.get("/api/v1/namespaces/default")
	if resp.Header.Get("X-Identity") != "cert:tower-agent" {
		t.Fatalf("kube-apiserver saw %q, want the agent's client certificate", resp.Header.Get("X-Identity"))
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestTowerAgentRefusedRetries: a refused config request (wrong token) is retried with Tower's
// backoff, never fatal; with --max-retry the loop ends (Tower's process then exits 0).
func TestTowerAgentRefusedRetries(t *testing.T) {
	e := newEnv(t, nil)
	o := e.options()
	o.Token, o.MaxRetryCount = "wrong", 3
	err := toweragent.Run(context.Background(), o)
	if !errors.Is(err, toweragent.ErrStopped) {
		t.Fatalf("Run: %v, want ErrStopped after 3 retries", err)
	}
	if !e.logged("Connection error: Unauthorized agent (Attempt: 2/3)") {
		t.Fatalf("agent log: %v", e.logs)
	}
	if e.proxy.Agents(cluster) != 0 {
		t.Fatal("refused agent registered")
	}
}

// syncAuth is a StaticAuthenticator the test may change while the proxy reads it.
type syncAuth struct {
	mu sync.Mutex
	m  tunnel.StaticAuthenticator
}

func (a *syncAuth) Authenticate(c, tok string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m.Authenticate(c, tok)
}

func (a *syncAuth) set(c, tok string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[c] = tok
}

// TestTowerAgentReconnects: after the proxy drops the session the agent reconnects on its own.
func TestTowerAgentReconnects(t *testing.T) {
	auth := &syncAuth{m: tunnel.StaticAuthenticator{cluster: token}}
	e := newEnv(t, auth)
	start(t, e.options())
	waitFor(t, "connected", func() bool { return e.proxy.TowerAgents(cluster) == 1 })
	auth.set(cluster, "rotated")
	e.proxy.Revalidate(cluster)
	waitFor(t, "revoked", func() bool { return e.proxy.TowerAgents(cluster) == 0 })
	waitFor(t, "refused with the old token", func() bool { return e.logged("Connection error: Unauthorized agent") })
	auth.set(cluster, token) // the old token is valid again: the agent's retry gets in
	waitFor(t, "reconnected", func() bool { return e.proxy.TowerAgents(cluster) == 1 })
}

func TestNormalizeServer(t *testing.T) {
	for in, want := range map[string]string{
		"http://10.0.0.1:8080":    "ws://10.0.0.1:8080",
		"http://10.0.0.1":         "ws://10.0.0.1", // Tower's `\d+$` takes the last octet for a port; the websocket dialer then uses :80
		"http://tower":            "ws://tower:80",
		"https://tower.example":   "wss://tower.example:443",
		"http://tower:8080/agent": "ws://tower:8080/agent",
		"ws://1.2.3.4:30880":      "ws://1.2.3.4:30880",
	} {
		got, err := toweragent.NormalizeServer(in)
		if err != nil || got != want {
			t.Errorf("NormalizeServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := toweragent.NormalizeServer(""); err == nil {
		t.Error("empty server accepted")
	}
}

// TestTowerAgentServesChannelTargets: the agent dials exactly what each channel names (it is the
// proxy's job to name only the two configured targets).
func TestTowerAgentDialsChannelTargets(t *testing.T) {
	e := newEnv(t, nil)
	o := e.options()
	var mu sync.Mutex
	var dialed []string
	o.DialTarget = func(network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		return net.Dial(network, addr)
	}
	start(t, o)
	waitFor(t, "connected", func() bool { return e.proxy.TowerAgents(cluster) == 1 })
	e.get("/api/v1/namespaces/default")
	c, err := net.Dial("tcp", e.cl.KubeSphereAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: evil.example:22\r\nConnection: close\r\n\r\n")
	_, _ = bufio.NewReader(c).ReadString('\n')
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	kube := strings.TrimPrefix(e.kube.URL, "https://")
	ks := strings.TrimPrefix(e.ks.URL, "http://")
	for _, d := range dialed {
		if d != kube && d != ks {
			t.Fatalf("agent dialed %q; configured: %q, %q", d, kube, ks)
		}
	}
	if len(dialed) < 2 {
		t.Fatalf("dialed %v", dialed)
	}
}
