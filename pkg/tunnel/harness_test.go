package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"golang.org/x/time/rate"
	"k8s.io/client-go/rest"
)

// kinds are the transports every tunnel case runs over.
var kinds = []string{"pipe", "tcp", "tls"}

const (
	testCluster  = "member1"
	testToken    = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	agentSAToken = "agent-sa-token"
	userToken    = "user-token"
	// waitLimit bounds every wait for an asynchronous outcome; it is a liveness guard, not a
	// timing assertion.
	waitLimit = 20 * time.Second
)

// logSink captures log lines of the proxy and agents.
type logSink struct {
	mu    sync.Mutex
	lines []string
	// quiet keeps verbosity 0, as the commands run by default (benchmarks).
	quiet bool
}

func (s *logSink) logger() logr.Logger {
	v := 4
	if s.quiet {
		v = 0
	}
	return funcr.New(func(prefix, args string) {
		s.mu.Lock()
		s.lines = append(s.lines, prefix+" "+args)
		s.mu.Unlock()
	}, funcr.Options{Verbosity: v})
}

func (s *logSink) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// backend is a fake kube-apiserver (TLS, HTTP/2 enabled) and ks-apiserver (plain HTTP).
type backend struct {
	kube, ks  *httptest.Server
	watchNext chan struct{}
}

func identity(r *http.Request) string {
	switch r.Header.Get("Authorization") {
	case "Bearer " + agentSAToken:
		return "agent"
	case "Bearer " + userToken:
		return "user"
	case "":
		return "anonymous"
	}
	return "other:" + strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
}

func pattern(i int) byte { return byte(i*7 + i/251) }

func newBackend(t testing.TB) *backend {
	b := &backend{watchNext: make(chan struct{}, 16)}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/namespaces/default", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Identity", identity(r))
		w.Header().Set("X-Proto", r.Proto)
		if identity(r) == "anonymous" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"kind":"Namespace","metadata":{"name":"default"}}`)
	})
	mux.HandleFunc("/large", func(w http.ResponseWriter, r *http.Request) {
		var n int
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		w.Header().Set("Content-Length", fmt.Sprint(n))
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = pattern(i)
		}
		_, _ = w.Write(buf)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		// Reads and writes at once: an HTTP/1 handler must opt in (the agent reaches this
		// backend over HTTP/1.1).
		_ = http.NewResponseController(w).EnableFullDuplex()
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("/watch", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Identity", identity(r))
		f := w.(http.Flusher)
		for i := 1; ; i++ {
			fmt.Fprintf(w, "{\"type\":\"ADDED\",\"n\":%d}\n", i)
			f.Flush()
			select {
			case <-b.watchNext:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("/upgrade", upgradeEcho)
	mux.HandleFunc("/enc", encodingHandler)
	kube := httptest.NewUnstartedServer(mux)
	kube.EnableHTTP2 = true
	kube.StartTLS()
	ksMux := http.NewServeMux()
	ksMux.HandleFunc("/kapis/version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Identity", identity(r))
		fmt.Fprint(w, "kubesphere")
	})
	ksMux.HandleFunc("/upgrade", upgradeEcho)
	ksMux.HandleFunc("/enc", encodingHandler)
	b.kube, b.ks = kube, httptest.NewServer(ksMux)
	t.Cleanup(func() { b.kube.Close(); b.ks.Close() })
	return b
}

// upgradeEcho switches to protocol "echo" and echoes bytes, like exec/attach streams do.
func upgradeEcho(w http.ResponseWriter, r *http.Request) {
	if !headerHasToken(r.Header, "Upgrade", "echo") {
		http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
		return
	}
	c, brw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Identity: %s\r\n\r\n", identity(r))
	_, _ = io.Copy(c, brw)
}

// faultConn can turn a live connection into a half-open one: frozen, writes vanish and reads
// block, as when a NAT or a peer silently drops the flow.
type faultConn struct {
	net.Conn
	mu     sync.Mutex
	frozen chan struct{}
	closed chan struct{}
	once   sync.Once
}

func (c *faultConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *faultConn) freeze() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen == nil {
		c.frozen = make(chan struct{})
	}
}

func (c *faultConn) isFrozen() chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frozen
}

func (c *faultConn) Write(p []byte) (int, error) {
	if c.isFrozen() != nil {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *faultConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if ch := c.isFrozen(); ch != nil {
		select { // nothing arrives any more; only closing the conn ends the read
		case <-ch:
		case <-c.closed:
		}
		return 0, net.ErrClosed
	}
	return n, err
}

// harness is one proxy (restartable), per-cluster listeners, and agents, over one transport kind.
type harness struct {
	t       testing.TB
	kind    string
	ca      *CA
	backend *backend
	logs    *logSink
	cfg     *Config
	auth    StaticAuthenticator
	limit   [2]float64 // failure rate, burst (0: defaults)
	// tweak, when set, adjusts the ProxyConfig before the proxy starts.
	tweak func(*ProxyConfig)
	// dialHook, when set, wraps every connection dialed to the proxy.
	dialHook func(net.Conn) net.Conn
	// noRelay makes the kube listener forward HTTP/2 clients request by request too.
	noRelay bool

	mu       sync.Mutex
	proxy    *Proxy
	ln       *killableListener
	stopRun  context.CancelFunc // ends the RunProxy of proxy
	runDone  chan error
	addr     string
	pipeLn   *connListener
	conns    []*faultConn
	cl       *ClusterListener
	adminTLS *tls.Config // client with a proxy-CA client certificate
	anonTLS  *tls.Config // client without a certificate
}

func testConfig() *Config {
	c := DefaultConfig()
	c.KeepAliveInterval = 100 * time.Millisecond
	c.KeepAliveTimeout = 300 * time.Millisecond
	c.HandshakeTimeout = 5 * time.Second
	c.DrainTimeout = 10 * time.Second
	c.Backoff = Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, ResetAfter: time.Second}
	return c
}

func newHarness(t testing.TB, kind string) *harness {
	t.Helper()
	ca, err := NewCA("ks-mc test CA")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, kind: kind, ca: ca, backend: newBackend(t), logs: &logSink{}, cfg: testConfig(),
		auth: StaticAuthenticator{testCluster: testToken}}
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	h.mu.Lock()
	cl := h.cl
	h.cl = nil
	h.mu.Unlock()
	if cl != nil {
		_ = cl.Close()
	}
	h.kill()
	h.mu.Lock()
	for _, c := range h.conns {
		if ch := c.isFrozen(); ch != nil {
			select {
			case <-ch:
			default:
				close(ch)
			}
		}
	}
	h.mu.Unlock()
}

// start brings the proxy up (on the same address after a restart).
func (h *harness) start() *Proxy { return h.startWith(nil) }

// startWith starts the proxy with auth as authenticator (nil: h.auth) and, when auth has one (a
// pkg/tunnel/kube Controller), its AgentChanged hook.
func (h *harness) startWith(auth Authenticator) *Proxy {
	h.t.Helper()
	log := h.logs.logger()
	pc := DefaultProxyConfig()
	pc.Config = h.cfg
	pc.Authenticator = h.auth
	if auth != nil {
		pc.Authenticator = auth
		if c, ok := auth.(interface{ AgentChanged(string) }); ok {
			pc.OnAgentChange = c.AgentChanged
		}
	}
	pc.Version = "test"
	pc.Logger = &log
	if h.limit[0] > 0 {
		pc.FailureRate, pc.FailureBurst = rate.Limit(h.limit[0]), int(h.limit[1])
	}
	if h.kind != "tls" {
		pc.AllowPlaintextAgents = true
	}
	if h.tweak != nil {
		h.tweak(pc)
	}
	var ln net.Listener
	if h.kind == "pipe" {
		pl := newConnListener()
		h.mu.Lock()
		h.pipeLn = pl
		h.mu.Unlock()
		ln = pl
	} else {
		h.mu.Lock()
		addr := h.addr
		h.mu.Unlock()
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		var err error
		for i := 0; i < 50; i++ { // the old socket may linger a moment after a restart
			if ln, err = net.Listen("tcp", addr); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			h.t.Fatal(err)
		}
		h.mu.Lock()
		h.addr = ln.Addr().String()
		h.mu.Unlock()
	}
	// The proxy runs as a process runs it (RunProxy); kill stops it without the drain.
	kl := &killableListener{Listener: ln, killed: make(chan struct{}), released: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	started, done := make(chan *Proxy, 1), make(chan error, 1)
	so := ServerOptions{Proxy: pc, CA: h.ca, TLS: h.kind == "tls", DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")},
		Listener: kl, Prepare: func(p *Proxy) { started <- p }}
	go func() { done <- RunProxy(ctx, so) }()
	var p *Proxy
	select {
	case p = <-started:
	case err := <-done:
		cancel()
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.proxy, h.ln, h.stopRun, h.runDone = p, kl, cancel, done
	h.mu.Unlock()
	return p
}

// killableListener is the proxy port of the harness. After kill its Accept fails only once the
// sessions were dropped, so that RunProxy does not notice the closed port and drain (send
// GoAway) first.
type killableListener struct {
	net.Listener
	killed, released chan struct{}
}

func (l *killableListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		select {
		case <-l.killed:
			<-l.released
		default:
		}
	}
	return c, err
}

// kill drops the proxy like kill -9: listener and sessions closed, no GoAway.
func (h *harness) kill() {
	h.mu.Lock()
	p, ln, stop, done := h.proxy, h.ln, h.stopRun, h.runDone
	h.proxy, h.ln, h.pipeLn, h.stopRun, h.runDone = nil, nil, nil, nil, nil
	h.mu.Unlock()
	if ln != nil {
		close(ln.killed)
		_ = ln.Listener.Close()
	}
	if p != nil {
		for _, s := range p.reg.all() {
			_ = s.sess.Close()
		}
	}
	if ln != nil {
		close(ln.released) // Serve returns now: RunProxy finds nothing left to drain
	}
	if stop != nil {
		stop()
		<-done
	}
}

func (h *harness) currentProxy() *Proxy {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proxy
}

// DialStream lets the cluster listener follow proxy restarts.
func (h *harness) DialStream(ctx context.Context, cluster string, sh StreamHeader) (net.Conn, error) {
	p := h.currentProxy()
	if p == nil {
		return nil, ErrNoAgent
	}
	return p.DialStream(ctx, cluster, sh)
}

func (h *harness) proxyURL() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch h.kind {
	case "pipe":
		return "http://pipe.invalid"
	case "tls":
		return "https://" + h.addr
	}
	return "http://" + h.addr
}

func (h *harness) dial(ctx context.Context) (net.Conn, error) {
	var c net.Conn
	if h.kind == "pipe" {
		h.mu.Lock()
		pl := h.pipeLn
		h.mu.Unlock()
		if pl == nil {
			return nil, errors.New("pipe: connection refused")
		}
		a, b := net.Pipe()
		if !pl.push(b) {
			return nil, errors.New("pipe: connection refused")
		}
		c = a
	} else {
		var d net.Dialer
		var err error
		h.mu.Lock()
		addr := h.addr
		h.mu.Unlock()
		if c, err = d.DialContext(ctx, "tcp", addr); err != nil {
			return nil, err
		}
	}
	fc := &faultConn{Conn: c, closed: make(chan struct{})}
	h.mu.Lock()
	h.conns = append(h.conns, fc)
	hook := h.dialHook
	h.mu.Unlock()
	if hook != nil {
		return hook(fc), nil
	}
	return fc, nil
}

func (h *harness) lastConn() *faultConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[len(h.conns)-1]
}

// agentOpts tweak an agent.
type agentOpts struct {
	cluster, token, saToken, pin string
	cfg                          *Config    // nil: the harness's
	noRelay                      bool       // an agent that does not relay HTTP/2 connections (an older one)
	relay                        *KubeRelay // replaces the agent's relay
	noDataConn                   bool       // relays on the stream (no data connections)
}

type runningAgent struct {
	a      *Agent
	cancel context.CancelFunc
	done   chan struct{}
	events chan AgentEvent
}

func (r *runningAgent) stop() {
	r.cancel()
	<-r.done
}

// nextEvent waits for the agent's next state event.
func (r *runningAgent) nextEvent(t *testing.T) AgentEvent {
	t.Helper()
	select {
	case e := <-r.events:
		return e
	case <-time.After(waitLimit):
		t.Fatal("no agent event")
	}
	return AgentEvent{}
}

func (h *harness) startAgent(o agentOpts) *runningAgent {
	h.t.Helper()
	if o.cluster == "" {
		o.cluster = testCluster
	}
	if o.token == "" {
		o.token = testToken
	}
	if o.saToken == "" {
		o.saToken = agentSAToken
	}
	if o.pin == "" {
		o.pin = h.ca.Hash()
	}
	log := h.logs.logger()
	events := make(chan AgentEvent, 1024)
	ac := DefaultAgentConfig()
	ac.Config = h.cfg
	if o.cfg != nil {
		ac.Config = o.cfg
	}
	ac.ProxyURL = h.proxyURL()
	ac.ClusterName = o.cluster
	tok := o.token
	ac.Token = func() (string, error) { return tok, nil }
	if h.kind == "tls" {
		ac.CACertHash = o.pin
	}
	ac.Kubernetes = testUpstream(h.t, &rest.Config{Host: h.backend.kube.URL, BearerToken: o.saToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: pemCert(h.backend.kube.Certificate())}})
	if o.noRelay {
		ac.Kubernetes.Relay = nil
	}
	if o.relay != nil {
		ac.Kubernetes.Relay = o.relay
	}
	ac.KubeSphereService = strings.TrimPrefix(h.backend.ks.URL, "http://")
	ac.Dial = h.dial
	ac.Logger = &log
	ac.OnState = func(e AgentEvent) {
		select {
		case events <- e:
		default:
		}
	}
	a, err := NewAgent(ac)
	if err != nil {
		h.t.Fatal(err)
	}
	if o.noDataConn {
		a.srv.dialData = nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{a: a, cancel: cancel, done: make(chan struct{}), events: events}
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

// listen starts the per-cluster listeners and the two client TLS configs.
func (h *harness) listen() *ClusterListener {
	h.t.Helper()
	rc, err := NewRenewingCert(h.ca, "kubernetes", []string{"kubernetes", "kubernetes.default.svc"}, []net.IP{net.ParseIP("127.0.0.1")}, ServingValidity)
	if err != nil {
		h.t.Fatal(err)
	}
	cl, err := ListenCluster(ClusterListenerConfig{Cluster: testCluster, BindAddress: "127.0.0.1",
		TLS: rc.ServerTLS(h.ca.Pool()), Dialer: h, Logger: h.logs.logger(), NoRelay: h.noRelay})
	if err != nil {
		h.t.Fatal(err)
	}
	certPEM, keyPEM, err := h.ca.IssueClusterClient(testCluster, "kubernetes-admin", []string{"system:masters"}, ClientValidity)
	if err != nil {
		h.t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.cl = cl
	h.adminTLS = &tls.Config{RootCAs: h.ca.Pool(), Certificates: []tls.Certificate{pair}, ServerName: "kubernetes"}
	h.anonTLS = &tls.Config{RootCAs: h.ca.Pool(), ServerName: "kubernetes"}
	h.mu.Unlock()
	return cl
}

func (h *harness) client(admin bool) *http.Client {
	cfg := h.anonTLS
	if admin {
		cfg = h.adminTLS
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg.Clone(), MaxIdleConnsPerHost: 64}}
}

func (h *harness) kubeURL(path string) string { return "https://" + h.cl.KubeAddr().String() + path }

// get performs a GET through the kube listener.
func (h *harness) get(c *http.Client, path, bearer string) (*http.Response, []byte, error) {
	req, _ := http.NewRequest(http.MethodGet, h.kubeURL(path), nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// rawUpgrade dials the listener, sends an Upgrade: echo request and returns the switched conn.
func rawUpgrade(conn net.Conn, path string) (*bufio.Reader, *http.Response, error) {
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", path)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	return br, resp, err
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func (h *harness) DialRelay(ctx context.Context, cluster, auth string) (net.Conn, error) {
	p := h.currentProxy()
	if p == nil {
		return nil, ErrNoAgent
	}
	return p.DialRelay(ctx, cluster, auth)
}
