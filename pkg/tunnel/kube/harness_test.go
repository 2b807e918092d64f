package kube

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"k8s.io/client-go/rest"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// The Controller's tests run a real proxy (tunnel.RunProxy) and agents (NewAgent, with the
// kube-apiserver upstream of AgentUpstream) over TCP on 127.0.0.1, against a fake kube-apiserver.
// This harness is the part of pkg/tunnel's wire test harness (harness_test.go there) these tests
// need, built on the wire package's exported API only.

const (
	testCluster  = "member1"
	testToken    = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	agentSAToken = "agent-sa-token"
	// waitLimit bounds every wait for an asynchronous outcome; it is a liveness guard, not a
	// timing assertion.
	waitLimit = 20 * time.Second
)

// logSink captures log lines of the proxy, the Controller and the agents.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *logSink) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		s.mu.Lock()
		s.lines = append(s.lines, prefix+" "+args)
		s.mu.Unlock()
	}, funcr.Options{Verbosity: 4})
}

func (s *logSink) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// identity names the caller the fake kube-apiserver sees.
func identity(r *http.Request) string {
	switch r.Header.Get("Authorization") {
	case "Bearer " + agentSAToken:
		return "agent"
	case "":
		return "anonymous"
	}
	return "other:" + strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

// newKubeBackend is a fake kube-apiserver (TLS, HTTP/2 enabled) answering GET
// /api/v1/namespaces/default with the caller's identity in X-Identity.
func newKubeBackend(t testing.TB) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/namespaces/default", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Identity", identity(r))
		if identity(r) == "anonymous" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"kind":"Namespace","metadata":{"name":"default"}}`)
	})
	kube := httptest.NewUnstartedServer(mux)
	kube.EnableHTTP2 = true
	kube.StartTLS()
	t.Cleanup(kube.Close)
	return kube
}

type harness struct {
	t       testing.TB
	ca      *tunnel.CA
	backend *httptest.Server
	logs    *logSink
	// auth is the proxy's authenticator unless startWith gets one.
	auth tunnel.Authenticator

	mu    sync.Mutex
	addr  string
	proxy *tunnel.Proxy
}

func testConfig() *tunnel.Config {
	c := tunnel.DefaultConfig()
	c.KeepAliveInterval = 100 * time.Millisecond
	c.KeepAliveTimeout = 300 * time.Millisecond
	c.HandshakeTimeout = 5 * time.Second
	c.DrainTimeout = 10 * time.Second
	c.Backoff = tunnel.Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, ResetAfter: time.Second}
	return c
}

// newHarness prepares a proxy and agents over kind ("tcp": plain TCP on 127.0.0.1, the only kind
// these tests use).
func newHarness(t testing.TB, kind string) *harness {
	t.Helper()
	if kind != "tcp" {
		t.Fatalf("kind %q: only tcp", kind)
	}
	ca, err := tunnel.NewCA("ks-mc test CA")
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, ca: ca, backend: newKubeBackend(t), logs: &logSink{},
		auth: tunnel.StaticAuthenticator{testCluster: testToken}}
}

// start brings the proxy up.
func (h *harness) start() *tunnel.Proxy { return h.startWith(nil) }

// startWith runs the proxy (tunnel.RunProxy) with auth as authenticator (nil: h.auth) and, when
// auth is a Controller, its AgentChanged hook.
func (h *harness) startWith(auth tunnel.Authenticator) *tunnel.Proxy {
	h.t.Helper()
	log := h.logs.logger()
	pc := tunnel.DefaultProxyConfig()
	pc.Config = testConfig()
	pc.Authenticator = h.auth
	if auth != nil {
		pc.Authenticator = auth
		if c, ok := auth.(*Controller); ok {
			pc.OnAgentChange = c.AgentChanged
		}
	}
	pc.Version, pc.Logger, pc.AllowPlaintextAgents = "test", &log, true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started, done := make(chan *tunnel.Proxy, 1), make(chan error, 1)
	go func() {
		done <- tunnel.RunProxy(ctx, tunnel.ServerOptions{Proxy: pc, CA: h.ca, Listener: ln, Prepare: func(p *tunnel.Proxy) { started <- p }})
	}()
	var p *tunnel.Proxy
	select {
	case p = <-started:
	case err := <-done:
		cancel()
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cancel(); <-done })
	h.mu.Lock()
	h.proxy, h.addr = p, ln.Addr().String()
	h.mu.Unlock()
	return p
}

func (h *harness) currentProxy() *tunnel.Proxy {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proxy
}

// DialStream lets a cluster listener reach the harness's proxy.
func (h *harness) DialStream(ctx context.Context, cluster string, sh tunnel.StreamHeader) (net.Conn, error) {
	p := h.currentProxy()
	if p == nil {
		return nil, tunnel.ErrNoAgent
	}
	return p.DialStream(ctx, cluster, sh)
}

// agentOpts tweak an agent (none are needed yet: the test cluster with the test token).
type agentOpts struct{}

type runningAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
	events chan tunnel.AgentEvent
}

func (r *runningAgent) stop() {
	r.cancel()
	<-r.done
}

// nextEvent waits for the agent's next state event.
func (r *runningAgent) nextEvent(t testing.TB) tunnel.AgentEvent {
	t.Helper()
	select {
	case e := <-r.events:
		return e
	case <-time.After(waitLimit):
		t.Fatal("no agent event")
	}
	return tunnel.AgentEvent{}
}

// startAgent runs an agent of the test cluster through NewAgent against the fake kube-apiserver.
func (h *harness) startAgent(agentOpts) *runningAgent {
	h.t.Helper()
	log := h.logs.logger()
	events := make(chan tunnel.AgentEvent, 1024)
	ac := tunnel.DefaultAgentConfig()
	ac.Config = testConfig()
	h.mu.Lock()
	ac.ProxyURL = "http://" + h.addr
	h.mu.Unlock()
	ac.ClusterName = testCluster
	ac.Token = func() (string, error) { return testToken, nil }
	ac.KubeSphereService = "127.0.0.1:1"
	ac.Logger = &log
	ac.OnState = func(e tunnel.AgentEvent) {
		select {
		case events <- e:
		default:
		}
	}
	a, err := NewAgent(ac, &rest.Config{Host: h.backend.URL, BearerToken: agentSAToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: pemCert(h.backend.Certificate())}})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{cancel: cancel, done: make(chan struct{}), events: events}
	go func() { defer close(r.done); _ = a.Run(ctx) }()
	h.t.Cleanup(r.stop)
	return r
}

// waitAgents waits until the proxy counts n agents of the test cluster.
func (h *harness) waitAgents(n int) {
	h.t.Helper()
	waitFor(h.t, fmt.Sprintf("%d agent(s) connected", n), func() bool {
		p := h.currentProxy()
		return p != nil && p.Agents(testCluster) == n
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listen starts the test cluster's listeners (kube TLS with client certificates of the CA).
func (h *harness) listen() *tunnel.ClusterListener {
	h.t.Helper()
	rc, err := tunnel.NewRenewingCert(h.ca, "kubernetes", []string{"kubernetes", "kubernetes.default.svc"}, []net.IP{net.ParseIP("127.0.0.1")}, tunnel.ServingValidity)
	if err != nil {
		h.t.Fatal(err)
	}
	cl, err := tunnel.ListenCluster(tunnel.ClusterListenerConfig{Cluster: testCluster, BindAddress: "127.0.0.1",
		TLS: rc.ServerTLS(h.ca.Pool()), Dialer: h, Logger: h.logs.logger()})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
