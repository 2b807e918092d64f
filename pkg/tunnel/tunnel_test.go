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
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// TestTunnel runs every case over net.Pipe, TCP and TLS.
func TestTunnel(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{"RequestResponse", caseRequestResponse},
		{"LargeBodies", caseLargeBodies},
		{"WatchStreaming", caseWatchStreaming},
		{"UpgradeEcho", caseUpgradeEcho},
		{"KubeSphereTarget", caseKubeSphere},
		{"WrongToken", caseWrongToken},
		{"UnknownCluster", caseUnknownCluster},
		{"RateLimitedFailures", caseRateLimited},
		{"UnknownTargetRefused", caseUnknownTarget},
		{"AgentStreamsRefused", caseAgentStreamsRefused},
		{"HalfOpenDetected", caseHalfOpen},
		{"ReconnectAfterProxyRestart", caseReconnect},
		{"TwoAgentsOneCluster", caseTwoAgents},
		{"AgentDrainOnShutdown", caseAgentDrain},
		{"ProxyDrainOnShutdown", caseProxyDrain},
		{"NoAgent", caseNoAgent},
	}
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					h := newHarness(t, kind)
					c.run(t, h)
				})
			}
		})
	}
}

// ready starts the proxy, the cluster listeners and one agent.
func ready(t testing.TB, h *harness) *runningAgent { return readyWith(h, agentOpts{}) }

// readyWith is ready with an agent of options o.
func readyWith(h *harness, o agentOpts) *runningAgent {
	h.start()
	h.listen()
	a := h.startAgent(o)
	h.waitAgents(1)
	return a
}

func caseRequestResponse(t *testing.T, h *harness) {
	ready(t, h)
	for _, tc := range []struct {
		name       string
		admin      bool
		bearer     string
		wantCode   int
		wantIdent  string
		wantInBody string
	}{
		{"client cert: agent credentials injected", true, "", 200, "agent", "Namespace"},
		{"client cert + own token: passed through unchanged", true, userToken, 200, "user", "Namespace"},
		{"own token without cert: passed through", false, userToken, 200, "user", "Namespace"},
		{"neither cert nor token: refused", false, "", 401, "", "client certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, err := h.get(h.client(tc.admin), "/api/v1/namespaces/default", tc.bearer)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.wantCode, body)
			}
			if got := resp.Header.Get("X-Identity"); got != tc.wantIdent {
				t.Fatalf("backend saw identity %q, want %q", got, tc.wantIdent)
			}
			if !bytes.Contains(body, []byte(tc.wantInBody)) {
				t.Fatalf("body %q lacks %q", body, tc.wantInBody)
			}
		})
	}
	// Watches reach the kube-apiserver over HTTP/2 from the agent (many share one connection),
	// other requests over HTTP/1.1 keep-alive connections; credentials are injected either way.
	for path, want := range map[string]string{
		"/api/v1/namespaces/default":            "HTTP/1.1",
		"/api/v1/namespaces/default?watch=1":    "HTTP/2.0",
		"/api/v1/namespaces/default?watch=true": "HTTP/2.0",
	} {
		resp, _, err := h.get(h.client(true), path, "")
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if resp.Header.Get("X-Proto") != want || resp.Header.Get("X-Identity") != "agent" {
			t.Fatalf("%s: agent → apiserver protocol %q identity %q, want %s as agent", path,
				resp.Header.Get("X-Proto"), resp.Header.Get("X-Identity"), want)
		}
	}
}

func caseLargeBodies(t *testing.T, h *harness) {
	ready(t, h)
	c := h.client(true)
	const n = 8 << 20
	resp, body, err := h.get(c, fmt.Sprintf("/large?n=%d", n), "")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("large GET: %v %v", err, resp)
	}
	if len(body) != n {
		t.Fatalf("got %d bytes, want %d", len(body), n)
	}
	for i := range body {
		if body[i] != pattern(i) {
			t.Fatalf("byte %d corrupted", i)
		}
	}
	up := bytes.Repeat([]byte("0123456789abcdef"), (4<<20)/16)
	resp, err = c.Post(h.kubeURL("/echo"), "application/octet-stream", bytes.NewReader(up))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("echoed %d bytes (err %v), want %d identical", len(got), err, len(up))
	}
}

func caseWatchStreaming(t *testing.T, h *harness) {
	ready(t, h)
	resp, err := h.client(true).Get(h.kubeURL("/watch"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// The backend writes one event and then waits: each event must arrive while the response is
	// still open, i.e. nothing on the path buffers the stream.
	for i := 1; i <= 5; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := fmt.Sprintf(`"n":%d}`, i); !strings.Contains(line, want) {
			t.Fatalf("event %d: %q", i, line)
		}
		h.backend.watchNext <- struct{}{}
	}
}

func caseUpgradeEcho(t *testing.T, h *harness) {
	ready(t, h)
	for _, tc := range []struct {
		name      string
		tlsCfg    *tls.Config
		bearer    bool
		wantIdent string
	}{
		{"client cert", h.adminTLS, false, "agent"},
		{"own token", h.anonTLS, true, "user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", h.cl.KubeAddr().String(), tc.tlsCfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			hdr := ""
			if tc.bearer {
				hdr = "Authorization: Bearer " + userToken + "\r\n"
			}
			fmt.Fprintf(conn, "POST /upgrade HTTP/1.1\r\nHost: x\r\n%sConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", hdr)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("X-Identity") != tc.wantIdent {
				t.Fatalf("upgrade: %s identity %q", resp.Status, resp.Header.Get("X-Identity"))
			}
			for i := 0; i < 3; i++ {
				msg := fmt.Sprintf("frame-%d-%s\n", i, strings.Repeat("x", 1000*i))
				if _, err := io.WriteString(conn, msg); err != nil {
					t.Fatal(err)
				}
				got, err := br.ReadString('\n')
				if err != nil || got != msg {
					t.Fatalf("echo %d: %q %v", i, got, err)
				}
			}
		})
	}
}

func caseKubeSphere(t *testing.T, h *harness) {
	ready(t, h)
	req, _ := http.NewRequest(http.MethodGet, "http://"+h.cl.KubeSphereAddr().String()+"/kapis/version", nil)
	req.Header.Set("Authorization", "Bearer "+userToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "kubesphere" || resp.Header.Get("X-Identity") != "user" {
		t.Fatalf("ks-apiserver answered %q as %q", body, resp.Header.Get("X-Identity"))
	}
	// Without a user token nothing is injected: ks-apiserver sees an anonymous request.
	resp, err = http.Get("http://" + h.cl.KubeSphereAddr().String() + "/kapis/version")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-Identity") != "anonymous" {
		t.Fatalf("ks-apiserver saw %q, want anonymous", resp.Header.Get("X-Identity"))
	}
	// Upgrades pass through the plain listener too.
	conn, err := net.Dial("tcp", h.cl.KubeSphereAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br, up, err := rawUpgrade(conn, "/upgrade")
	if err != nil || up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("ks upgrade: %v %v", up, err)
	}
	io.WriteString(conn, "ping\n")
	if got, _ := br.ReadString('\n'); got != "ping\n" {
		t.Fatalf("ks echo %q", got)
	}
}

// expectRefused waits for n failed attempts and returns the last error.
func expectRefused(t *testing.T, a *runningAgent, n int) error {
	t.Helper()
	var last error
	for seen := 0; seen < n; {
		e := a.nextEvent(t)
		if e.Connected {
			t.Fatal("agent connected, want refused")
		}
		last = e.Err
		seen++
	}
	return last
}

func caseWrongToken(t *testing.T, h *harness) {
	h.start()
	bad := "ffff" + testToken[4:]
	a := h.startAgent(agentOpts{token: bad})
	// Refused, reported and retried (two attempts at least): the agent never exits.
	err := expectRefused(t, a, 2)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("err = %v, want ErrUnauthorized with 401", err)
	}
	if h.currentProxy().Agents(testCluster) != 0 {
		t.Fatal("a refused agent was registered")
	}
	logs := h.logs.all()
	if !strings.Contains(logs, `"cluster"="member1"`) || !strings.Contains(logs, "agent refused") {
		t.Fatalf("proxy log does not name the cluster:\n%s", logs)
	}
	if strings.Contains(logs, bad) || strings.Contains(logs, testToken) {
		t.Fatal("a token appears in the logs")
	}
	if strings.Contains(err.Error(), bad) {
		t.Fatal("the token appears in the agent's error")
	}
}

func caseUnknownCluster(t *testing.T, h *harness) {
	h.start()
	a := h.startAgent(agentOpts{cluster: "nosuch"})
	err := expectRefused(t, a, 2)
	// The same answer as a wrong token: the proxy port is no oracle for cluster names.
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("err = %v, want ErrUnauthorized with 401 (as for a wrong token)", err)
	}
	if !strings.Contains(h.logs.all(), `"cluster"="nosuch"`) {
		t.Fatal("proxy log does not name the cluster")
	}
}

func caseRateLimited(t *testing.T, h *harness) {
	h.limit = [2]float64{0.001, 2}
	h.start()
	a := h.startAgent(agentOpts{token: "wrong"})
	var limited bool
	for i := 0; i < 5 && !limited; i++ {
		e := a.nextEvent(t)
		limited = errors.Is(e.Err, ErrRateLimited)
	}
	if !limited {
		t.Fatal("failures were not rate limited")
	}
	if got := h.currentProxy().metrics.authFailures.get("rate_limited"); got == 0 {
		t.Fatal("rate_limited metric not counted")
	}
	// The right token from the same address gets through while the bucket is empty: a flood of
	// wrong tokens (behind one SNAT address) cannot lock a valid agent out.
	b := h.startAgent(agentOpts{})
	if e := b.nextEvent(t); !e.Connected {
		t.Fatalf("good agent locked out by the failures of another: %+v", e)
	}
	h.waitAgents(1)
	// And the wrong token is still limited.
	for i := 0; i < 5; i++ {
		if e := a.nextEvent(t); !errors.Is(e.Err, ErrRateLimited) {
			t.Fatalf("bad agent after the good one connected: %+v", e)
		}
	}
}

func caseUnknownTarget(t *testing.T, h *harness) {
	ready(t, h)
	p := h.currentProxy()
	ctx := context.Background()
	// The proxy refuses to send a header the agent would refuse.
	if _, err := p.DialStream(ctx, testCluster, StreamHeader{Target: "etcd", Auth: AuthNone}); !errors.Is(err, ErrUnknownTarget) {
		t.Fatalf("DialStream(etcd) = %v", err)
	}
	// And the agent refuses such streams from a peer that sends them anyway.
	for _, raw := range []string{"KSMC1 etcd none\n", "KSMC1 kubesphere cert\n", "KSMC1 10.0.0.1:22 none\n", "GET / HTTP/1.1\n"} {
		c, err := p.openStream(ctx, testCluster, []byte(raw), false)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if !errors.Is(err, ErrUnknownTarget) && !errors.Is(err, ErrBadStreamHeader) {
			t.Fatalf("%q: read err %v, want a refusal", raw, err)
		}
	}
	// The session survives refused streams.
	if resp, _, err := h.get(h.client(true), "/api/v1/namespaces/default", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after refusals: %v %v", resp, err)
	}
}

func caseAgentStreamsRefused(t *testing.T, h *harness) {
	a := ready(t, h)
	var sess *yamux.Session
	waitFor(t, "agent session", func() bool {
		a.a.mu.Lock()
		defer a.a.mu.Unlock()
		sess = a.a.current
		return sess != nil
	})
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(st, "CONNECT 10.0.0.1:22\n")
	n, err := st.Read(make([]byte, 16))
	st.Close()
	if n != 0 || err == nil {
		t.Fatalf("agent-opened stream got %d bytes, err %v", n, err)
	}
	waitFor(t, "refusal counted", func() bool { return h.currentProxy().metrics.refusedAgentStreams.Load() == 1 })
}

func caseHalfOpen(t *testing.T, h *harness) {
	a := ready(t, h)
	if e := a.nextEvent(t); !e.Connected {
		t.Fatalf("first event %+v", e)
	}
	resp, err := h.client(true).Get(h.kubeURL("/watch"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	h.lastConn().freeze()
	// The watch fails instead of hanging, the proxy drops the agent, and the agent notices on its
	// own (keepalive), then reconnects over a fresh connection.
	watchErr := make(chan error, 1)
	go func() { _, err := br.ReadString('\n'); watchErr <- err }()
	select {
	case err := <-watchErr:
		if err == nil {
			t.Fatal("watch read succeeded on a half-open tunnel")
		}
	case <-time.After(waitLimit):
		t.Fatal("watch hangs on a half-open tunnel")
	}
	e := a.nextEvent(t)
	if e.Connected || e.Err == nil {
		t.Fatalf("agent event after freeze: %+v, want a disconnect with a reason", e)
	}
	if e := a.nextEvent(t); !e.Connected {
		t.Fatalf("agent did not reconnect: %+v", e)
	}
	h.waitAgents(1)
	if resp, _, err := h.get(h.client(true), "/api/v1/namespaces/default", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after reconnect: %v %v", resp, err)
	}
}

func caseReconnect(t *testing.T, h *harness) {
	ready(t, h)
	h.kill()
	// Requests fail clearly while the proxy is down.
	resp, body, err := h.get(h.client(true), "/api/v1/namespaces/default", "")
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(body, []byte("no agent connected")) {
		t.Fatalf("proxy down: %v %v %s", resp, err, body)
	}
	time.Sleep(100 * time.Millisecond) // a few failed dials, so the backoff has grown
	h.start()
	h.waitAgents(1)
	resp, _, err = h.get(h.client(true), "/api/v1/namespaces/default", "")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after restart: %v %v", resp, err)
	}
}

func caseTwoAgents(t *testing.T, h *harness) {
	h.start()
	h.listen()
	first := h.startAgent(agentOpts{saToken: agentSAToken})
	h.startAgent(agentOpts{saToken: "second-agent"})
	h.waitAgents(2)
	// Both serve: new streams are spread round robin (8 concurrent watches hold 8 streams).
	seen := map[string]int{}
	c := h.client(true)
	var bodies []io.Closer
	for i := 0; i < 8; i++ {
		resp, err := c.Get(h.kubeURL("/watch"))
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
		seen[resp.Header.Get("X-Identity")]++
	}
	for _, b := range bodies {
		b.Close()
	}
	if seen["agent"] == 0 || seen["other:second-agent"] == 0 {
		t.Fatalf("watches per agent: %v, want both", seen)
	}
	// The first leaves (rolling update): requests keep working through the second.
	first.stop()
	h.waitAgents(1)
	for i := 0; i < 5; i++ {
		resp, _, err := h.get(c, "/api/v1/namespaces/default", "")
		if err != nil || resp.Header.Get("X-Identity") != "other:second-agent" {
			t.Fatalf("after the first agent left: %v %v", resp, err)
		}
	}
}

func caseAgentDrain(t *testing.T, h *harness) {
	a := ready(t, h)
	resp, err := h.client(true).Get(h.kubeURL("/watch"))
	if err != nil {
		t.Fatal(err)
	}
	agentDrainKeepsWatch(t, h, a, resp)
}

// agentDrainKeepsWatch: on SIGTERM the agent goes away for new streams while the open watch of
// resp keeps flowing, and it exits once the watch has ended.
func agentDrainKeepsWatch(t *testing.T, h *harness, a *runningAgent, resp *http.Response) {
	t.Helper()
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	a.cancel() // SIGTERM
	// GoAway: the proxy stops routing new streams to this agent...
	waitFor(t, "new streams refused", func() bool {
		c, err := h.currentProxy().DialStream(context.Background(), testCluster, StreamHeader{Target: TargetKubeSphere, Auth: AuthNone})
		if c != nil {
			c.Close()
		}
		return errors.Is(err, ErrGoAway)
	})
	// ...while the open watch keeps flowing during the drain.
	h.backend.watchNext <- struct{}{}
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, `"n":2}`) {
		t.Fatalf("watch during drain: %q %v", line, err)
	}
	select {
	case <-a.done:
		t.Fatal("agent exited before its open stream finished")
	default:
	}
	resp.Body.Close()
	select {
	case <-a.done:
	case <-time.After(waitLimit):
		t.Fatal("agent did not exit after its streams drained")
	}
}

func caseProxyDrain(t *testing.T, h *harness) {
	ready(t, h)
	resp, err := h.client(true).Get(h.kubeURL("/watch"))
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	p := h.currentProxy()
	done := make(chan struct{})
	go func() { _ = p.Shutdown(context.Background()); close(done) }()
	waitFor(t, "draining", func() bool { return p.draining.Load() })
	h.backend.watchNext <- struct{}{}
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, `"n":2}`) {
		t.Fatalf("watch during proxy drain: %q %v", line, err)
	}
	select {
	case <-done:
		t.Fatal("proxy shut down before its open stream finished")
	default:
	}
	resp.Body.Close()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("proxy did not finish shutting down")
	}
}

func caseNoAgent(t *testing.T, h *harness) {
	h.start()
	h.listen()
	resp, body, err := h.get(h.client(true), "/api/v1/namespaces/default", "")
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(body, []byte(`cluster \"member1\": no agent connected`)) {
		t.Fatalf("no agent: %v %v %s", resp, err, body)
	}
}
