package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"
)

// h2Client is an HTTP/2 client of the kube listener (h.client speaks HTTP/1.1).
func (h *harness) h2Client(admin bool) *http.Client {
	cfg := h.anonTLS
	if admin {
		cfg = h.adminTLS
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg.Clone(), ForceAttemptHTTP2: true}}
}

// relayedConnections is the proxy's count of kubernetes-h2 streams (relayed client connections).
func (h *harness) relayedConnections(t *testing.T) string {
	return h.metric(`ksmc_proxy_target_streams_total{target="kubernetes-h2"}`)
}

// metric is a sample of the proxy's metrics ("0" when absent).
func (h *harness) metric(name string) string {
	rec := httptest.NewRecorder()
	h.proxy.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return "0"
}

// reusedGet is h.get that also reports whether the request rode an existing connection.
func (h *harness) reusedGet(c *http.Client, path, bearer string) (*http.Response, []byte, bool, error) {
	var reused bool
	req, _ := http.NewRequest(http.MethodGet, h.kubeURL(path), nil)
	req = req.WithContext(httptrace.WithClientTrace(context.Background(),
		&httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, reused, err
}

// TestRelay runs HTTP/2 clients through the relay on every kind of tunnel connection: the
// credential rules of both stream modes, bodies both ways, watches, the fallbacks.
func TestRelay(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			for _, c := range []struct {
				name string
				run  func(*testing.T, *harness)
			}{
				{"Credentials", caseRelayCredentials},
				{"RefusedThenServedOnOneConnection", caseRelayRefusedThenServed},
				{"BodiesBothWays", caseRelayBodies},
				{"Watch", caseRelayWatch},
				{"OlderAgentServedRequestByRequest", caseRelayOlderAgent},
				{"ListenerWithoutRelay", caseRelayOff},
				{"DrainSendsGoAway", caseRelayGoAway},
				{"OnTheStreamWithoutDataConnections", caseRelayOnStream},
				{"AgentDrainWaitsForRelayedWatches", caseRelayAgentDrain},
			} {
				t.Run(c.name, func(t *testing.T) { c.run(t, newHarness(t, kind)) })
			}
		})
	}
}

func caseRelayCredentials(t *testing.T, h *harness) {
	ready(t, h)
	for _, tc := range []struct {
		name      string
		admin     bool
		bearer    string
		wantCode  int
		wantIdent string
	}{
		{"client cert: the agent's token added", true, "", 200, "agent"},
		{"client cert + own token: kept", true, userToken, 200, "user"},
		{"own token without cert: kept", false, userToken, 200, "user"},
		{"neither: 401 from the agent", false, "", 401, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := h.get(h.h2Client(tc.admin), "/api/v1/namespaces/default", tc.bearer)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantCode || resp.Header.Get("X-Identity") != tc.wantIdent {
				t.Fatalf("status %d identity %q, want %d %q: %s", resp.StatusCode, resp.Header.Get("X-Identity"), tc.wantCode, tc.wantIdent, body)
			}
			if tc.wantCode == 401 {
				// The Status body of the request-by-request path, so client-go shows its message.
				if !bytes.Contains(body, []byte(`"message":"ks-mc proxy: present a client certificate`)) ||
					resp.Header.Get("Content-Type") != "application/json" {
					t.Fatalf("401 without the advice: %v %s", resp.Header, body)
				}
				return
			}
			// The kube-apiserver saw the client's own HTTP/2 connection, relayed.
			if resp.Header.Get("X-Proto") != "HTTP/2.0" {
				t.Fatalf("backend saw %q, want the relayed HTTP/2.0", resp.Header.Get("X-Proto"))
			}
		})
	}
	// One relayed connection per client (each case built its own), each on a data connection.
	if got := h.relayedConnections(t); got != "4" {
		t.Fatalf("ksmc_proxy_target_streams_total{target=\"kubernetes-h2\"} = %s, want 4", got)
	}
	if got := h.metric("ksmc_proxy_relay_connections_total"); got != "4" {
		t.Fatalf("ksmc_proxy_relay_connections_total = %s, want 4", got)
	}
}

func caseRelayRefusedThenServed(t *testing.T, h *harness) {
	ready(t, h)
	c := h.h2Client(false)
	if resp, _, err := h.get(c, "/api/v1/namespaces/default", userToken); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	for i := 0; i < 50; i++ {
		resp, _, reused, err := h.reusedGet(c, "/api/v1/namespaces/default", "")
		if err != nil || resp.StatusCode != 401 || !reused {
			t.Fatalf("refused request %d: %v %v reused=%v", i, resp, err, reused)
		}
		resp, _, reused, err = h.reusedGet(c, "/api/v1/namespaces/default", userToken)
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Identity") != "user" || !reused {
			t.Fatalf("request %d after a refused one: %v %v reused=%v", i, resp, err, reused)
		}
	}
}

func caseRelayBodies(t *testing.T, h *harness) {
	ready(t, h)
	c := h.h2Client(false)
	post := func(bearer string, body []byte) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodPost, h.kubeURL("/echo"), bytes.NewReader(body))
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	// Refused uploads: their DATA never reaches the kube-apiserver, and the connection's
	// flow-control credit must come back from the agent, or the client stalls after ~1 MiB.
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for i := 0; i < 40; i++ {
		if resp, _ := post("", chunk); resp.StatusCode != 401 {
			t.Fatalf("upload %d without a token: %d", i, resp.StatusCode)
		}
	}
	up := bytes.Repeat([]byte("0123456789abcdef"), (4<<20)/16)
	if resp, got := post(userToken, up); resp.StatusCode != 200 || !bytes.Equal(got, up) {
		t.Fatalf("echo: %d, %d bytes, want %d identical", resp.StatusCode, len(got), len(up))
	}
	const n = 8 << 20
	resp, body, err := h.get(c, fmt.Sprintf("/large?n=%d", n), userToken)
	if err != nil || resp.StatusCode != 200 || len(body) != n {
		t.Fatalf("large GET: %v %v %d bytes", err, resp, len(body))
	}
	for i := range body {
		if body[i] != pattern(i) {
			t.Fatalf("byte %d corrupted", i)
		}
	}
}

func caseRelayWatch(t *testing.T, h *harness) {
	ready(t, h)
	c := h.h2Client(true)
	const n = 20
	var bodies []*bufio.Reader
	var closers []io.Closer
	defer func() {
		for _, b := range closers {
			b.Close()
		}
	}()
	before := goroutineStacks()
	for i := 0; i < n; i++ {
		resp, err := c.Get(h.kubeURL("/watch?watch=true"))
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, resp.Body)
		br := bufio.NewReader(resp.Body)
		if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, `"n":1`) {
			t.Fatalf("watch %d: first event %q %v", i, line, err)
		}
		if resp.Header.Get("X-Identity") != "agent" {
			t.Fatalf("watch %d: identity %q", i, resp.Header.Get("X-Identity"))
		}
		bodies = append(bodies, br)
	}
	after := goroutineStacks()
	// The watches share one client connection, so one relay (two goroutines) and one splice.
	if got := countStacks(after, "tunnel.(*h2Relay)") - countStacks(before, "tunnel.(*h2Relay)"); got != 2 {
		t.Errorf("%d more relay goroutines with %d watches open on one connection, want 2", got, n)
	}
	if got := countStacks(after, "tunnel.(*ClusterListener).ServeHTTP"); got != 0 {
		t.Errorf("%d listener handler goroutines, want none (the connection is relayed)", got)
	}
	h.backend.watchNext <- struct{}{}
	// One of the watches gets the next event (the backend's channel wakes one handler).
	var wg sync.WaitGroup
	got := make(chan string, n)
	for _, br := range bodies[:1] {
		wg.Add(1)
		go func() { defer wg.Done(); l, _ := br.ReadString('\n'); got <- l }()
	}
	wg.Wait()
	if l := <-got; !strings.Contains(l, `"n":2`) {
		t.Fatalf("second event %q", l)
	}
}

func caseRelayOlderAgent(t *testing.T, h *harness) {
	readyWith(h, agentOpts{noRelay: true})
	resp, _, err := h.get(h.h2Client(true), "/api/v1/namespaces/default", "")
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Identity") != "agent" {
		t.Fatalf("%v %v", resp, err)
	}
	if resp.Header.Get("X-Proto") != "HTTP/1.1" || resp.ProtoMajor != 2 {
		t.Fatalf("client %s, backend %q: want HTTP/2 to the listener and the agent's HTTP/1.1", resp.Proto, resp.Header.Get("X-Proto"))
	}
	if got := h.relayedConnections(t); got != "0" {
		t.Fatalf("%s relayed connections to an agent that does not relay", got)
	}
}

// caseRelayAgentDrain: on SIGTERM the agent keeps a relayed client's open watch flowing (its data
// connection is not cut with the session) and exits once the watch has ended.
func caseRelayAgentDrain(t *testing.T, h *harness) {
	a := ready(t, h)
	resp, err := h.h2Client(true).Get(h.kubeURL("/watch?watch=true"))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.metric("ksmc_proxy_relay_connections_total"); got != "1" {
		t.Fatalf("relayed on %s data connections, want 1", got)
	}
	agentDrainKeepsWatch(t, h, a, resp)
}

// caseRelayOnStream: an agent that opens no data connection relays on the stream, with the same
// credential rules.
func caseRelayOnStream(t *testing.T, h *harness) {
	readyWith(h, agentOpts{noDataConn: true})
	for _, tc := range []struct {
		admin  bool
		bearer string
		code   int
		ident  string
	}{{true, "", 200, "agent"}, {false, userToken, 200, "user"}, {false, "", 401, ""}} {
		resp, _, err := h.get(h.h2Client(tc.admin), "/api/v1/namespaces/default", tc.bearer)
		if err != nil || resp.StatusCode != tc.code || resp.Header.Get("X-Identity") != tc.ident {
			t.Fatalf("%+v: %v %v", tc, resp, err)
		}
		if tc.code == 200 && resp.Header.Get("X-Proto") != "HTTP/2.0" {
			t.Fatalf("backend saw %q, want the relayed HTTP/2.0", resp.Header.Get("X-Proto"))
		}
	}
	if got, data := h.relayedConnections(t), h.metric("ksmc_proxy_relay_connections_total"); got != "3" || data != "0" {
		t.Fatalf("%s relayed connections, %s on data connections; want 3 and 0", got, data)
	}
}

func caseRelayOff(t *testing.T, h *harness) {
	h.noRelay = true
	ready(t, h)
	resp, _, err := h.get(h.h2Client(false), "/api/v1/namespaces/default", userToken)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Proto") != "HTTP/1.1" {
		t.Fatalf("%v %v", resp, err)
	}
}

// caseRelayGoAway: when the proxy drains, the agent tells relayed clients to open new connections
// (GOAWAY): the next request does not ride the old one, and nothing in flight fails.
func caseRelayGoAway(t *testing.T, h *harness) {
	a := ready(t, h)
	c := h.h2Client(true)
	if resp, _, err := h.get(c, "/api/v1/namespaces/default", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	watch, err := c.Get(h.kubeURL("/watch?watch=true"))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Body.Close()
	br := bufio.NewReader(watch.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	a.a.srv.setKeepAlives(false)
	// The GOAWAY is in order with the server's frames: once the watch's next event arrives, the
	// client has seen it.
	h.backend.watchNext <- struct{}{}
	if l, err := br.ReadString('\n'); err != nil || !strings.Contains(l, `"n":2`) {
		t.Fatalf("watch after GOAWAY: %q %v", l, err)
	}
	a.a.srv.setKeepAlives(true)
	resp, _, reused, err := h.reusedGet(c, "/api/v1/namespaces/default", "")
	if err != nil || resp.StatusCode != 200 || reused {
		t.Fatalf("after GOAWAY: %v %v reused=%v, want a new connection", resp, err, reused)
	}
}

// TestRelayFallsBackWhenTheAgentCannotRelay: an agent that offers the relay but cannot reach its
// kube-apiserver over HTTP/2 answers ERR; the client is then served request by request (and learns
// nothing of the failed attempt).
func TestRelayFallsBackWhenTheAgentCannotRelay(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	h.listen()
	h.startAgent(agentOpts{relay: &KubeRelay{Token: func() (string, error) { return "", nil },
		Dial: func(context.Context) (net.Conn, error) { return nil, errors.New("no h2 here") }}})
	h.waitAgents(1)
	resp, _, err := h.get(h.h2Client(true), "/api/v1/namespaces/default", "")
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Proto") != "HTTP/1.1" || resp.Header.Get("X-Identity") != "agent" {
		t.Fatalf("%v %v", resp, err)
	}
}

// TestRelayHostileClients: clients of the kube listener that negotiate HTTP/2 and then do not
// speak it lose their connection, and the relay's goroutines end.
func TestRelayHostileClients(t *testing.T) {
	cfg := testConfig()
	cfg.StreamOpenTimeout = 300 * time.Millisecond
	h := newHarness(t, "tcp")
	h.cfg = cfg
	ready(t, h)
	dial := func(t *testing.T) *tls.Conn {
		c := h.anonTLS.Clone()
		c.NextProtos = []string{"h2"}
		conn, err := tls.Dial("tcp", h.cl.KubeAddr().String(), c)
		if err != nil {
			t.Fatal(err)
		}
		if conn.ConnectionState().NegotiatedProtocol != "h2" {
			t.Fatalf("ALPN %q", conn.ConnectionState().NegotiatedProtocol)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	closed := func(t *testing.T, c *tls.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second)) // a bound on the test, not a measurement
		for {
			var b [512]byte
			if _, err := c.Read(b[:]); err != nil {
				if isTimeout(err) {
					t.Fatal("the connection was not closed")
				}
				return
			}
		}
	}
	t.Run("silent after the handshake", func(t *testing.T) { closed(t, dial(t)) })
	t.Run("HTTP/1.1 instead of the preface", func(t *testing.T) {
		c := dial(t)
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		closed(t, c)
	})
	t.Run("preface then CONTINUATION alone", func(t *testing.T) {
		c := dial(t)
		_, _ = io.WriteString(c, h2Preface)
		_, _ = c.Write(appendFrameHeader(nil, 0, h2FrameSettings, 0, 0))
		_, _ = c.Write(appendFrameHeader(nil, 1, h2FrameContinuation, h2FlagEndHeaders, 1))
		_, _ = c.Write([]byte{0x82})
		closed(t, c)
	})
	waitFor(t, "the relays to end", func() bool {
		return countStacks(goroutineStacks(), "tunnel.(*h2Relay)") == 0
	})
}

// TestRelayOnlyToAgentsThatOfferIt: kubernetes-h2 streams go only to sessions whose upgrade
// request named the feature (an unknown or look-alike name does not count), never to Tower
// sessions; a cluster whose agents do not offer it answers ErrNoRelay, one without agents
// ErrNoAgent.
func TestRelayOnlyToAgentsThatOfferIt(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   bool
	}{
		{"kubernetes-h2", true}, {"other, Kubernetes-H2", true}, {"kubernetes-h2x", false}, {"kubernetes", false}, {"", false},
	} {
		h := http.Header{}
		if tc.header != "" {
			h.Set(FeaturesHeader, tc.header)
		}
		if got := headerHasToken(h, FeaturesHeader, FeatureKubeH2); got != tc.want {
			t.Errorf("%q: offers the relay %v, want %v", tc.header, got, tc.want)
		}
	}
	h := newHarness(t, "pipe")
	h.start()
	h.listen()
	ctx := context.Background()
	if _, err := h.proxy.DialStream(ctx, testCluster, StreamHeader{Target: TargetKubernetesH2, Auth: AuthCert}); !errors.Is(err, ErrNoAgent) {
		t.Fatalf("no agent: %v", err)
	}
	h.startAgent(agentOpts{noRelay: true})
	h.waitAgents(1)
	if _, err := h.proxy.DialStream(ctx, testCluster, StreamHeader{Target: TargetKubernetesH2, Auth: AuthCert}); !errors.Is(err, ErrNoRelay) {
		t.Fatalf("an agent without the relay: %v", err)
	}
	h.startAgent(agentOpts{})
	h.waitAgents(2)
	for i := 0; i < 4; i++ { // round robin would reach the first agent every other time
		st, err := h.proxy.DialStream(ctx, testCluster, StreamHeader{Target: TargetKubernetesH2, Auth: AuthCert})
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if _, err := st.Read(nil); err != nil {
			t.Fatalf("dial %d: answer %v", i, err)
		}
		st.Close()
	}
}

// TestRelayDataConnectionRefused: the data-connection endpoint admits an agent as the tunnel's
// does (token, TLS, upgrade) and then only for a relay id its cluster is waited for, once.
func TestRelayDataConnectionRefused(t *testing.T) {
	h := newHarness(t, "tls") // agents must use TLS
	h.start()
	id, other := newRelayID(), newRelayID()
	h.proxy.relays.add(id, &pendingRelay{cluster: testCluster, ch: make(chan net.Conn, 1)})
	h.proxy.relays.add(other, &pendingRelay{cluster: "other", ch: make(chan net.Conn, 1)})
	defer h.proxy.relays.remove(id)
	defer h.proxy.relays.remove(other)
	try := func(mut func(r *http.Request)) int {
		r := httptest.NewRequest(http.MethodGet, RelayPath, nil)
		r.TLS = &tls.ConnectionState{}
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", RelayUpgrade)
		r.Header.Set(ClusterHeader, testCluster)
		r.Header.Set("Authorization", "Bearer "+testToken)
		r.Header.Set(RelayHeader, id)
		mut(r)
		rec := httptest.NewRecorder()
		h.proxy.Handler().ServeHTTP(rec, r)
		return rec.Code
	}
	for _, tc := range []struct {
		name string
		mut  func(*http.Request)
		want int
	}{
		{"no token", func(r *http.Request) { r.Header.Del("Authorization") }, 401},
		{"wrong token", func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, 401},
		{"plaintext", func(r *http.Request) { r.TLS = nil }, 403},
		{"the tunnel's upgrade", func(r *http.Request) { r.Header.Set("Upgrade", UpgradeProtocol) }, 426},
		{"unknown id", func(r *http.Request) { r.Header.Set(RelayHeader, newRelayID()) }, 404},
		{"malformed id", func(r *http.Request) { r.Header.Set(RelayHeader, strings.ToUpper(id)) }, 404},
		{"overlong id", func(r *http.Request) { r.Header.Set(RelayHeader, id+strings.Repeat("0", 4096)) }, 404},
		{"another cluster's id", func(r *http.Request) { r.Header.Set(RelayHeader, other) }, 404},
	} {
		if got := try(tc.mut); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	// A claim is once only: a replayed id is refused (the first claim took it; a recorder cannot
	// be hijacked, so it answers 500 after the claim).
	if got := try(func(*http.Request) {}); got != http.StatusInternalServerError {
		t.Fatalf("first claim: %d", got)
	}
	if got := try(func(*http.Request) {}); got != 404 {
		t.Fatalf("replayed id: %d, want 404", got)
	}
}
