package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
)

// A Tower v0.2.1 agent as the tests need it, with knobs for hostile variants. The faithful one
// (flags, backoff, exit rules) is test/toweragent; its end-to-end tests against this proxy live
// there (imports point down).

type towerOpts struct {
	cluster, token string
	subprotocol    string             // "" = TowerProtocol
	requestType    string             // "" = config
	payload        []byte             // overrides the marshalled config
	mutate         func(*TowerConfig) // adjusts the config before marshalling
	header         http.Header
	plain          bool // ws:// even to a TLS proxy port
}

type towerClient struct {
	ws      *websocket.Conn
	conn    ssh.Conn
	raw     *faultConn
	ok      bool
	reply   string
	mu      sync.Mutex
	remotes []string
	chans   <-chan ssh.NewChannel
	done    chan struct{}
}

func (c *towerClient) close() { _ = c.conn.Close() }

func (c *towerClient) dialed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.remotes...)
}

// towerURL is the ws:// or wss:// address of the harness's proxy.
func (h *harness) towerURL() string {
	u := h.proxyURL()
	return strings.Replace(u, "http", "ws", 1) + "/"
}

func (h *harness) towerConfig(o towerOpts) *TowerConfig {
	return &TowerConfig{Version: "0.0.0-rc", Name: o.cluster, Token: o.token,
		KubernetesSvcHost: strings.TrimPrefix(h.backend.kube.URL, "https://"),
		KubeSphereSvcHost: strings.TrimPrefix(h.backend.ks.URL, "http://"),
		CAData:            pemCert(h.backend.kube.Certificate()), BearerToken: []byte(agentSAToken)}
}

// towerDial connects like Tower's agent: websocket, SSH client, config request; on success it
// serves the proxy's channels by dialing their extra data, as Tower's agent does.
func (h *harness) towerDial(o towerOpts) (*towerClient, error) {
	h.t.Helper()
	if o.cluster == "" {
		o.cluster = testCluster
	}
	if o.token == "" {
		o.token = testToken
	}
	if o.subprotocol == "" {
		o.subprotocol = TowerProtocol
	}
	c := &towerClient{done: make(chan struct{})}
	d := websocket.Dialer{ReadBufferSize: 1024, WriteBufferSize: 1024, HandshakeTimeout: waitLimit,
		Subprotocols: []string{o.subprotocol},
		NetDialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			nc, err := h.dial(ctx)
			if err == nil {
				c.raw = h.lastConn()
			}
			return nc, err
		},
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // Tower agents verify nothing either
	}
	u := h.towerURL()
	if o.plain {
		u = "ws://" + h.addr + "/"
	}
	ws, resp, err := d.Dial(u, o.header)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("upgrade: %s: %w", resp.Status, err)
		}
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	c.ws = ws
	sc, chans, reqs, err := ssh.NewClientConn(&wsConn{Conn: ws}, "", &ssh.ClientConfig{
		User: "", Auth: []ssh.AuthMethod{ssh.Password("")}, ClientVersion: TowerClientVersion,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: waitLimit,
	})
	if err != nil {
		_ = ws.Close()
		return nil, fmt.Errorf("ssh: %w", err)
	}
	c.conn, c.chans = sc, chans
	go ssh.DiscardRequests(reqs)
	payload := o.payload
	if payload == nil {
		cfg := h.towerConfig(o)
		if o.mutate != nil {
			o.mutate(cfg)
		}
		payload, _ = json.Marshal(cfg)
	}
	typ := o.requestType
	if typ == "" {
		typ = TowerConfigRequest
	}
	ok, reply, err := sc.SendRequest(typ, true, payload)
	if err != nil {
		_ = sc.Close()
		return nil, fmt.Errorf("config request: %w", err)
	}
	c.ok, c.reply = ok, string(reply)
	if ok {
		go func() {
			defer close(c.done)
			for ch := range chans {
				remote := string(ch.ExtraData())
				c.mu.Lock()
				c.remotes = append(c.remotes, ch.ChannelType()+" "+remote)
				c.mu.Unlock()
				st, creqs, err := ch.Accept()
				if err != nil {
					continue
				}
				go ssh.DiscardRequests(creqs)
				go func() {
					dst, err := net.Dial("tcp", remote)
					if err != nil {
						_ = st.Close()
						return
					}
					go func() { _, _ = io.Copy(dst, st); _ = dst.Close() }()
					_, _ = io.Copy(st, dst)
					_ = st.Close()
				}()
			}
		}()
	} else {
		close(c.done)
	}
	h.t.Cleanup(c.close)
	return c, nil
}

// mustTower connects and requires acceptance.
func (h *harness) mustTower(o towerOpts) *towerClient {
	h.t.Helper()
	c, err := h.towerDial(o)
	if err != nil {
		h.t.Fatal(err)
	}
	if !c.ok || c.reply != "" {
		h.t.Fatalf("config request refused: ok=%v %q", c.ok, c.reply)
	}
	return c
}

// refusedAfterReply waits until the proxy closed a refused connection (Tower's agent does not).
func refusedAfterReply(t *testing.T, c *towerClient) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.conn.Wait() }()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("the proxy kept a refused Tower connection open")
	}
}

// TestTowerAgentServes: a Tower agent (over TCP and TLS) serves the per-cluster listeners:
// kube-apiserver requests with the proxy-CA certificate use the agent's service-account token,
// a caller's own token passes through, a caller with neither is refused, watches stream, upgrades
// splice, ks-apiserver is reached in plain HTTP; only the two configured targets are dialed.
func TestTowerAgentServes(t *testing.T) {
	// Not over net.Pipe: both SSH ends write their version string before reading, which needs
	// the buffering every real transport has.
	for _, kind := range []string{"tcp", "tls"} {
		t.Run(kind, func(t *testing.T) {
			h := newHarness(t, kind)
			p := h.start()
			c := h.mustTower(towerOpts{})
			h.waitAgents(1)
			if got := p.Protocol(testCluster); got != ProtocolTower {
				t.Fatalf("protocol %q, want tower", got)
			}
			h.listen()
			resp, body, err := h.get(h.client(true), "/api/v1/namespaces/default", "")
			if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Identity") != "agent" {
				t.Fatalf("admin request: %v %v %q", resp, err, body)
			}
			resp, _, err = h.get(h.client(false), "/api/v1/namespaces/default", userToken)
			if err != nil || resp.Header.Get("X-Identity") != "user" {
				t.Fatalf("user request: %v %v", resp, err)
			}
			resp, body, err = h.get(h.client(false), "/api/v1/namespaces/default", "")
			if err != nil || resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "Status") {
				t.Fatalf("request without credentials: %v %v %q", resp, err, body)
			}
			// A large body, intact.
			resp, body, err = h.get(h.client(true), "/large?n=3000000", "")
			if err != nil || len(body) != 3000000 {
				t.Fatalf("large: %v %v %d", resp, err, len(body))
			}
			for i := range body {
				if body[i] != pattern(i) {
					t.Fatalf("large body differs at %d", i)
				}
			}
			// A watch streams.
			wr, err := h.client(true).Get(h.kubeURL("/watch"))
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(wr.Body)
			for i := 1; i <= 3; i++ {
				line, err := br.ReadString('\n')
				if err != nil || !strings.Contains(line, fmt.Sprintf(`"n":%d`, i)) {
					t.Fatalf("watch event %d: %q %v", i, line, err)
				}
				h.backend.watchNext <- struct{}{}
			}
			wr.Body.Close()
			// An upgrade (exec-like) splices.
			tc, err := tls.Dial("tcp", h.cl.KubeAddr().String(), h.adminTLS.Clone())
			if err != nil {
				t.Fatal(err)
			}
			ubr, up, err := rawUpgrade(tc, "/upgrade")
			if err != nil || up.StatusCode != http.StatusSwitchingProtocols || up.Header.Get("X-Identity") != "agent" {
				t.Fatalf("upgrade: %v %v", up, err)
			}
			_, _ = io.WriteString(tc, "hello\n")
			if got, _ := ubr.ReadString('\n'); got != "hello\n" {
				t.Fatalf("upgrade echo %q", got)
			}
			tc.Close()
			ksGet := func(bearer string) (string, string) {
				req, _ := http.NewRequest(http.MethodGet, "http://"+h.cl.KubeSphereAddr().String()+"/kapis/version", nil)
				if bearer != "" {
					req.Header.Set("Authorization", "Bearer "+bearer)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return string(b), resp.Header.Get("X-Identity")
			}
			if body, id := ksGet(userToken); body != "kubesphere" || id != "user" {
				t.Fatalf("ks-apiserver answered %q as %q", body, id)
			}
			if _, id := ksGet(""); id != "anonymous" {
				t.Fatalf("ks-apiserver saw %q, want anonymous (nothing injected)", id)
			}
			kube := TowerChannelType + " " + strings.TrimPrefix(h.backend.kube.URL, "https://")
			ks := TowerChannelType + " " + strings.TrimPrefix(h.backend.ks.URL, "http://")
			for _, r := range c.dialed() {
				if r != kube && r != ks {
					t.Fatalf("the proxy opened channel %q; only %q and %q are configured", r, kube, ks)
				}
			}
			if len(c.dialed()) == 0 {
				t.Fatal("no channel opened")
			}
			var m strings.Builder
			p.metrics.write(&m, p.reg.snapshot(), p.tower.reg.snapshot())
			for _, want := range []string{`ksmc_proxy_agents{cluster="member1"} 1`,
				`ksmc_proxy_agent_sessions{cluster="member1",protocol="tower"} 1`,
				`ksmc_proxy_protocol_sessions_total{protocol="tower"} 1`} {
				if !strings.Contains(m.String(), want) {
					t.Fatalf("metrics lack %s:\n%s", want, m.String())
				}
			}
			c.close()
			h.waitAgents(0)
			resp, body, err = h.get(h.client(true), "/api/v1/namespaces/default", "")
			if err != nil || resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "no agent connected") {
				t.Fatalf("after the agent left: %v %v %q", resp, err, body)
			}
			if strings.Contains(h.logs.all(), testToken) || strings.Contains(h.logs.all(), agentSAToken) {
				t.Fatal("a token reached the log")
			}
		})
	}
}

// TestTowerPlaintextOnTLSPort: a proxy port with TLS that refuses plaintext ks-mc agents still
// serves Tower agents over ws:// (what every KubeSphere agent Deployment dials).
func TestTowerPlaintextOnTLSPort(t *testing.T) {
	h := newHarness(t, "tls")
	h.tweak = func(pc *ProxyConfig) { pc.AllowPlaintextAgents = false }
	p := h.start()
	h.mustTower(towerOpts{plain: true})
	h.waitAgents(1)
	if p.Protocol(testCluster) != ProtocolTower {
		t.Fatal("tower agent over ws:// not served")
	}
	resp, _ := rawRequest(t, h.addr, upgradeRequest(testCluster, testToken))
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("plaintext ks-mc agent: %s, want 403", resp.Status)
	}
}

// TestTowerRefusals: every refused credential gets Tower's one answer, the proxy closes the
// connection, a valid agent is admitted afterwards, nothing echoes the token.
func TestTowerRefusals(t *testing.T) {
	h := newHarness(t, "tcp")
	h.limit = [2]float64{1000, 1000}
	p := h.start()
	long := strings.Repeat("a", 61)
	for _, tc := range []struct {
		name string
		o    towerOpts
		want string
	}{
		{"wrong token", towerOpts{token: "wrong"}, towerRefused},
		{"unknown cluster", towerOpts{cluster: "nosuch"}, towerRefused},
		{"empty token", towerOpts{mutate: func(c *TowerConfig) { c.Token = "" }}, towerRefused},
		{"name too long", towerOpts{cluster: long}, towerRefused},
		{"name not a label", towerOpts{cluster: "Member_1"}, towerRefused},
		{"name with newline", towerOpts{cluster: "member1\nx"}, towerRefused},
		{"not json", towerOpts{payload: []byte("{not json")}, "invalid json config"},
		{"json array", towerOpts{payload: []byte(`[1,2]`)}, "invalid json config"},
		{"oversized", towerOpts{payload: []byte(`{"Name":"` + strings.Repeat("a", maxTowerConfig) + `"}`)}, "invalid json config"},
		{"empty payload", towerOpts{payload: []byte{}}, "invalid json config"},
		{"first request not config", towerOpts{requestType: "ping"}, "expecting config request"},
		{"kube target not host:port", towerOpts{mutate: func(c *TowerConfig) { c.KubernetesSvcHost = "rancher/k8s/clusters/c-1" }}, "invalid config: KubernetesSvcHost"},
		{"ks target with space", towerOpts{mutate: func(c *TowerConfig) { c.KubeSphereSvcHost = "a b:80" }}, "invalid config: KubeSphereSvcHost"},
		{"bad port", towerOpts{mutate: func(c *TowerConfig) { c.KubernetesSvcHost = "10.0.0.1:99999" }}, "invalid config: KubernetesSvcHost"},
		{"bad CA", towerOpts{mutate: func(c *TowerConfig) { c.CAData = []byte("nope") }}, "invalid config: CAData"},
		{"cert without key", towerOpts{mutate: func(c *TowerConfig) { c.CertData = []byte("x") }}, "invalid config: CertData"},
		{"bearer with newline", towerOpts{mutate: func(c *TowerConfig) { c.BearerToken = []byte("a\r\nX-Evil: 1") }}, "invalid config: BearerToken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := h.towerDial(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if c.ok || !strings.HasPrefix(c.reply, tc.want) {
				t.Fatalf("answer ok=%v %q, want refusal %q", c.ok, c.reply, tc.want)
			}
			refusedAfterReply(t, c)
			if p.Agents(testCluster) != 0 {
				t.Fatal("a refused agent was registered")
			}
		})
	}
	if logs := h.logs.all(); strings.Contains(logs, "wrong") && strings.Contains(logs, "token\":\"wrong") || strings.Contains(logs, long) || strings.Contains(logs, testToken) {
		t.Fatalf("a token or an unvalidated name reached the log:\n%s", logs)
	}
	h.mustTower(towerOpts{})
	h.waitAgents(1)
}

// TestTowerRateLimited: failures beyond the (IP, cluster) burst are answered "too many failed
// attempts" (the agent retries after its backoff), a valid agent still gets in.
func TestTowerRateLimited(t *testing.T) {
	h := newHarness(t, "tcp")
	h.limit = [2]float64{0.001, 3}
	h.start()
	var last string
	for i := 0; i < 5; i++ {
		c, err := h.towerDial(towerOpts{token: "wrong"})
		if err != nil {
			t.Fatal(err)
		}
		last = c.reply
		if i < 3 && last != towerRefused {
			t.Fatalf("attempt %d: %q", i, last)
		}
	}
	if !strings.HasPrefix(last, "too many failed attempts") {
		t.Fatalf("after the burst: %q", last)
	}
	h.mustTower(towerOpts{})
	h.waitAgents(1)
}

// TestTowerBadUpgrades: what is not a Tower agent's upgrade never reaches SSH.
func TestTowerBadUpgrades(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	base := "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
	key := "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, tc := range []struct {
		name, req string
		code      int
	}{
		{"other subprotocol", base + key + "Sec-WebSocket-Protocol: kubesphere-v2\r\n\r\n", http.StatusNotFound},
		{"no subprotocol", base + key + "\r\n", http.StatusNotFound},
		{"no key", base + "Sec-WebSocket-Protocol: kubesphere-v1\r\n\r\n", http.StatusBadRequest},
		{"POST", strings.Replace(base, "GET", "POST", 1) + key + "Sec-WebSocket-Protocol: kubesphere-v1\r\n\r\n", http.StatusMethodNotAllowed},
		{"huge header", base + key + "Sec-WebSocket-Protocol: kubesphere-v1\r\nX-Pad: " + strings.Repeat("a", 1<<20) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := rawRequest(t, h.addr, tc.req)
			if resp.StatusCode != tc.code {
				t.Fatalf("%s, want %d", resp.Status, tc.code)
			}
		})
	}
	// With --tower-agents=never the upgrade is not served at all.
	h2 := newHarness(t, "tcp")
	h2.tweak = func(pc *ProxyConfig) { pc.TowerAgents = TowerAgentsNever }
	h2.start()
	if _, err := h2.towerDial(towerOpts{}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("tower agent with --tower-agents=never: %v, want 404", err)
	}
}

// TestTowerSlowHandshake: a connection that upgrades and then stalls (or never sends its config
// request) is closed at the handshake timeout; a replayed handshake never becomes a session.
func TestTowerSlowHandshake(t *testing.T) {
	h := newHarness(t, "tcp")
	cfg := testConfig()
	cfg.HandshakeTimeout = 300 * time.Millisecond
	h.cfg = cfg
	p := h.start()
	// Upgrade, then silence.
	d := websocket.Dialer{Subprotocols: []string{TowerProtocol}}
	ws, _, err := d.Dial(h.towerURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(waitLimit))
	if _, _, err := ws.ReadMessage(); err == nil {
		// The server's SSH banner arrives first; then the connection must end.
		for err == nil {
			_, _, err = ws.ReadMessage()
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the proxy kept a stalled handshake open")
	}
	// SSH done, no config request.
	ws2, _, err := d.Dial(h.towerURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	sc, _, reqs, err := ssh.NewClientConn(&wsConn{Conn: ws2}, "", &ssh.ClientConfig{Auth: []ssh.AuthMethod{ssh.Password("")},
		ClientVersion: TowerClientVersion, HostKeyCallback: ssh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	done := make(chan error, 1)
	go func() { done <- sc.Wait() }()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("the proxy kept an SSH connection without config request open")
	}
	// Replay: the bytes a real agent sent, sent again, fail the key exchange.
	rec := &recordingConn{}
	h.dialHook = func(c net.Conn) net.Conn { rec.Conn = c; return rec }
	c := h.mustTower(towerOpts{})
	h.waitAgents(1)
	c.close()
	h.waitAgents(0)
	h.dialHook = nil
	raw, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = raw.Write(rec.sent())
	_ = raw.SetReadDeadline(time.Now().Add(waitLimit))
	_, _ = io.Copy(io.Discard, raw)
	if p.Agents(testCluster) != 0 || p.tower.reg.count(testCluster) != 0 {
		t.Fatal("a replayed handshake became a session")
	}
}

// recordingConn keeps what was written.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	out []byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.out = append(c.out, p...)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *recordingConn) sent() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.out...)
}

// TestTowerAgentChannelRefused: a channel the agent opens (Tower's proxy would dial its extra
// data on the host network) is refused.
func TestTowerAgentChannelRefused(t *testing.T) {
	h := newHarness(t, "tcp")
	p := h.start()
	c := h.mustTower(towerOpts{})
	_, _, err := c.conn.OpenChannel("kubesphere", []byte("10.0.0.1:22"))
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.Prohibited {
		t.Fatalf("agent-opened channel: %v, want prohibited", err)
	}
	if p.metrics.refusedAgentStreams.Load() != 1 {
		t.Fatal("refusal not counted")
	}
	// A second config request is answered false; the session stays.
	if ok, _, err := c.conn.SendRequest(TowerConfigRequest, true, []byte("{}")); ok || err != nil {
		t.Fatalf("second config: %v %v", ok, err)
	}
	if ok, _, err := c.conn.SendRequest(TowerPingRequest, true, nil); !ok || err != nil {
		t.Fatalf("ping: %v %v", ok, err)
	}
}

// TestTowerStreamCaps: the per-session and per-cluster stream caps hold for Tower sessions too
// (503 with a Status, the session stays).
func TestTowerStreamCaps(t *testing.T) {
	for _, scope := range []string{"session", "cluster"} {
		t.Run(scope, func(t *testing.T) {
			h := newHarness(t, "tcp")
			cfg := testConfig()
			if scope == "session" {
				cfg.MaxStreamsPerSession = 1
			}
			h.cfg = cfg
			h.tweak = func(pc *ProxyConfig) {
				if scope == "cluster" {
					pc.MaxStreamsPerCluster = 1
				}
			}
			p := h.start()
			h.mustTower(towerOpts{})
			h.waitAgents(1)
			h.listen()
			wr, err := h.client(true).Get(h.kubeURL("/watch"))
			if err != nil {
				t.Fatal(err)
			}
			defer wr.Body.Close()
			if _, err := bufio.NewReader(wr.Body).ReadString('\n'); err != nil {
				t.Fatal(err)
			}
			resp, body, err := h.get(h.client(true), "/api/v1/namespaces/default", "")
			if err != nil || resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many open streams") {
				t.Fatalf("beyond the cap: %v %v %q", resp, err, body)
			}
			if p.metrics.streamLimited.get(scope) == 0 || p.TowerAgents(testCluster) != 1 {
				t.Fatalf("limit %v, agents %d", p.metrics.streamLimited.snapshot(), p.TowerAgents(testCluster))
			}
		})
	}
}

// TestTowerHalfOpen: a Tower session whose connection goes silent is dropped by the proxy's
// keepalive (Tower's proxy never pings), and a request then gets 503 instead of hanging.
func TestTowerHalfOpen(t *testing.T) {
	h := newHarness(t, "tcp")
	p := h.start()
	c := h.mustTower(towerOpts{})
	h.waitAgents(1)
	h.listen()
	c.raw.freeze()
	h.waitAgents(0)
	if p.metrics.towerDropped.Load() != 1 {
		t.Fatalf("dropped %d, want 1", p.metrics.towerDropped.Load())
	}
	resp, _, err := h.get(h.client(true), "/api/v1/namespaces/default", "")
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after the drop: %v %v", resp, err)
	}
}

// TestTowerRevoked: a rotated token, a deleted Cluster close the Tower session.
func TestTowerRevoked(t *testing.T) {
	h := newHarness(t, "tcp")
	p := h.start()
	h.mustTower(towerOpts{})
	h.waitAgents(1)
	h.auth[testCluster] = "rotated"
	if n := p.Revalidate(testCluster); n != 1 {
		t.Fatalf("revalidate closed %d", n)
	}
	h.waitAgents(0)
	if c, err := h.towerDial(towerOpts{}); err != nil || c.ok {
		t.Fatalf("old token after rotation: %v %+v", err, c)
	}
	h.mustTower(towerOpts{token: "rotated"})
	h.waitAgents(1)
	delete(h.auth, testCluster)
	p.Revalidate(testCluster)
	h.waitAgents(0)
	if p.metrics.revokedSessions.get("token_changed") != 1 || p.metrics.revokedSessions.get("cluster_gone") != 1 {
		t.Fatalf("revocations %v", p.metrics.revokedSessions.snapshot())
	}
}

// TestTowerSessionReplaced: a second Tower agent of the cluster (a rollout restart) is admitted
// (never "A session already allocated", tower#29) and takes the new requests; when the old one
// goes, nothing fails.
func TestTowerSessionReplaced(t *testing.T) {
	h := newHarness(t, "tcp")
	p := h.start()
	old := h.mustTower(towerOpts{})
	h.waitAgents(1)
	h.listen()
	client := h.client(true)
	get := func(what string) {
		t.Helper()
		resp, _, err := h.get(client, "/api/v1/namespaces/default", "")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", what, resp, err)
		}
	}
	get("before")
	nw := h.mustTower(towerOpts{})
	h.waitAgents(2)
	waitFor(t, "idle streams of the old session closed", func() bool { return p.tower.reg.sessions(testCluster)[0].open.Load() == 0 })
	before := len(old.dialed())
	for i := 0; i < 5; i++ {
		get("after the new agent")
	}
	if len(old.dialed()) != before || len(nw.dialed()) == 0 {
		t.Fatalf("requests went to the old session (old %d→%d, new %d)", before, len(old.dialed()), len(nw.dialed()))
	}
	old.close()
	h.waitAgents(1)
	get("after the old agent left")
}

// policyAuth is a StaticAuthenticator with the downgrade protection of the Controller.
type policyAuth struct {
	StaticAuthenticator
	mu       sync.Mutex
	migrated map[string]bool
}

func (a *policyAuth) TowerAgentAllowed(cluster string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.migrated[cluster]
}

// TestTowerDowngradeRefused: a Cluster marked as migrated to the ks-mc agent refuses Tower agents
// even with the right token, and a Tower session still up when the mark appears is drained.
func TestTowerDowngradeRefused(t *testing.T) {
	h := newHarness(t, "tcp")
	auth := &policyAuth{StaticAuthenticator: h.auth, migrated: map[string]bool{}}
	p := h.startWith(auth)
	h.mustTower(towerOpts{})
	h.waitAgents(1)
	auth.mu.Lock()
	auth.migrated[testCluster] = true
	auth.mu.Unlock()
	p.Revalidate(testCluster)
	h.waitAgents(0)
	c, err := h.towerDial(towerOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if c.ok || !strings.Contains(c.reply, "served by the ks-mc agent") {
		t.Fatalf("tower agent of a migrated Cluster: ok=%v %q", c.ok, c.reply)
	}
	refusedAfterReply(t, c)
	// A wrong token still gets the uniform answer (the mark is no oracle).
	if c, _ := h.towerDial(towerOpts{token: "wrong"}); c == nil || c.reply != towerRefused {
		t.Fatalf("wrong token on a migrated Cluster: %+v", c)
	}
}

// TestTowerToKsMCSwitch: with a Tower session serving, a ks-mc agent of the same cluster comes
// up: a request loop running across the switch sees no failure, new requests go to the ks-mc
// session, a watch opened on the Tower session keeps streaming until the Tower agent goes.
func TestTowerToKsMCSwitch(t *testing.T) {
	h := newHarness(t, "tcp")
	p := h.start()
	tw := h.mustTower(towerOpts{})
	h.waitAgents(1)
	h.listen()
	client := h.client(true)
	wr, err := client.Get(h.kubeURL("/watch"))
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Body.Close()
	br := bufio.NewReader(wr.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var failures, total atomic.Int64
	var loopErr error
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, _, err := h.get(client, "/api/v1/namespaces/default", "")
			total.Add(1)
			if err != nil || resp.StatusCode != 200 {
				failures.Add(1)
				loopErr = fmt.Errorf("%v %v", resp, err)
			}
		}
	}()
	waitFor(t, "requests through the tower session", func() bool { return total.Load() >= 100 })
	a := h.startAgent(agentOpts{})
	h.waitAgents(2)
	waitFor(t, "ks-mc preferred", func() bool { return p.Protocol(testCluster) == ProtocolKsMC })
	waitFor(t, "tower streams idle", func() bool {
		s := p.tower.reg.sessions(testCluster)
		return len(s) == 1 && s[0].open.Load() <= 1 // the watch
	})
	n := len(tw.dialed())
	waitFor(t, "requests on the ks-mc session", func() bool { return p.reg.sessions(testCluster)[0].sess.NumStreams() > 0 })
	// The watch on the Tower session still streams.
	h.backend.watchNext <- struct{}{}
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, `"n":2`) {
		t.Fatalf("watch on the tower session after the switch: %q %v", line, err)
	}
	tw.close()
	h.waitAgents(1)
	atSwitch := total.Load()
	waitFor(t, "requests through the ks-mc session", func() bool { return total.Load() >= atSwitch+100 })
	close(stop)
	<-loopDone
	if failures.Load() > 0 {
		t.Fatalf("%d of %d requests failed across the switch, last: %v", failures.Load(), total.Load(), loopErr)
	}
	if len(tw.dialed()) != n {
		t.Fatalf("new connections went to the tower agent after the ks-mc agent was up (%d→%d)", n, len(tw.dialed()))
	}
	t.Logf("%d requests across the switch, %d failed; the watch on the tower session kept streaming", total.Load(), failures.Load())
	_ = a
}

// TestTowerFallbackWhenKsMCLeaves: a migration that fails (the ks-mc agent goes again) leaves the
// member on its Tower agent: requests are served through the Tower session again.
func TestTowerFallbackWhenKsMCLeaves(t *testing.T) {
	h := newHarness(t, "tcp")
	p := h.start()
	tw := h.mustTower(towerOpts{})
	h.waitAgents(1)
	h.listen()
	a := h.startAgent(agentOpts{})
	h.waitAgents(2)
	client := h.client(true)
	if resp, _, err := h.get(client, "/api/v1/namespaces/default", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("with both: %v %v", resp, err)
	}
	a.stop()
	h.waitAgents(1)
	before := len(tw.dialed())
	for i := 0; i < 3; i++ {
		if resp, _, err := h.get(client, "/api/v1/namespaces/default", ""); err != nil || resp.StatusCode != 200 {
			t.Fatalf("after the ks-mc agent left: %v %v", resp, err)
		}
	}
	if p.Protocol(testCluster) != ProtocolTower || len(tw.dialed()) == before {
		t.Fatalf("protocol %q, tower channels %d→%d", p.Protocol(testCluster), before, len(tw.dialed()))
	}
}
