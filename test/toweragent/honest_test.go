package toweragent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
	"github.com/ks-mc/ks-mc/test/toweragent"
)

// Kept honest: recordings of the real kubesphere/tower v0.2.1 agent and proxy (built from Tower's
// source at tag v0.2.1, see pkg/tunnel/spec.md "Tower agents") live in pkg/tunnel/testdata/tower.
// These tests record test/toweragent and ks-mc's proxy the same way and compare the structure.
//
// Re-recording (needs the real binaries; see spec.md):
//
//	KSMC_TOWER_AGENT=/path/to/tower/agent go test ./test/toweragent -run TestRecordRealAgent -update
//	KSMC_TOWER_PROXY=ws://127.0.0.1:8080 KSMC_TOWER_TOKEN=<token> KSMC_TOWER_LISTENER=127.0.0.1:<kubesphereAPIServerPort> \
//	  go test ./test/toweragent -run TestRecordRealProxy -update
var update = flag.Bool("update", false, "rewrite the recordings of the real Tower agent/proxy (needs KSMC_TOWER_*)")

const recordDir = "../../pkg/tunnel/testdata/tower"

func loadRecording(t *testing.T, name string) *Recording {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(recordDir, name))
	if err != nil {
		t.Fatal(err)
	}
	r := &Recording{}
	if err := json.Unmarshal(b, r); err != nil {
		t.Fatal(err)
	}
	return r
}

func saveRecording(t *testing.T, name string, r *Recording) {
	t.Helper()
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(filepath.Join(recordDir, name), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// recordServer is a Tower proxy that records what an agent does: upgrade (any path, no
// subprotocol in the answer, as Tower's), SSH server (SSH-kubesphere-v1-server, ECDSA P-256 host
// key, any password), the first global request, then it opens one "kubesphere" channel to an echo
// server and waits for the agent's keepalive "ping".
type recordServer struct {
	rec   *Recording
	mu    sync.Mutex
	echo  net.Listener
	done  chan struct{}
	once  sync.Once
	srv   *http.Server
	addr  string
	reply Reply
}

func newRecordServer(t *testing.T, rec *Recording) *recordServer {
	rs := &recordServer{rec: rec, done: make(chan struct{}), reply: Reply{OK: true}}
	var err error
	if rs.echo, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := rs.echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := ssh.NewSignerFromKey(key)
	cfg := &ssh.ServerConfig{ServerVersion: tunnel.TowerServerVersion,
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) { return nil, nil },
		AuthLogCallback: func(c ssh.ConnMetadata, method string, err error) {
			rs.mu.Lock()
			rs.rec.Auth = append(rs.rec.Auth, AuthAttempt{User: c.User(), Method: method, OK: err == nil})
			rs.mu.Unlock()
		}}
	cfg.AddHostKey(signer)
	up := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024, CheckOrigin: func(*http.Request) bool { return true }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rs.addr = ln.Addr().String()
	rs.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-rs.done: // one recorded connection; the agent's reconnects are turned away
			http.Error(w, "recorded", http.StatusServiceUnavailable)
			return
		default:
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		rs.serve(ws, cfg)
	})}
	go func() { _ = rs.srv.Serve(ln) }()
	t.Cleanup(func() { _ = rs.srv.Close(); _ = rs.echo.Close() })
	return rs
}

func (rs *recordServer) serve(ws *websocket.Conn, cfg *ssh.ServerConfig) {
	defer rs.once.Do(func() { close(rs.done) })
	conn, chans, reqs, err := ssh.NewServerConn(&wsNetConn{Conn: ws}, cfg)
	if err != nil {
		return
	}
	defer conn.Close()
	go func() {
		for ch := range chans {
			_ = ch.Reject(ssh.Prohibited, "no")
		}
	}()
	r, ok := <-reqs
	if !ok {
		return
	}
	rs.addReq(r)
	_ = r.Reply(rs.reply.OK, []byte(rs.reply.Payload))
	if !rs.reply.OK {
		return
	}
	ch, creqs, err := conn.OpenChannel(tunnel.TowerChannelType, []byte(rs.echo.Addr().String()))
	c := Channel{Type: tunnel.TowerChannelType, Extra: "<echo server host:port>", Accepted: err == nil}
	if err == nil {
		go ssh.DiscardRequests(creqs)
		_, _ = ch.Write([]byte("ping\n"))
		buf := make([]byte, 5)
		_, rerr := io.ReadFull(ch, buf)
		c.Dialed = rerr == nil && string(buf) == "ping\n"
		_ = ch.Close()
	}
	rs.mu.Lock()
	rs.rec.Channels = append(rs.rec.Channels, c)
	rs.mu.Unlock()
	t := time.NewTimer(waitLimit)
	defer t.Stop()
	select {
	case r, ok := <-reqs:
		if ok {
			rs.addReq(r)
			if r.WantReply {
				_ = r.Reply(true, nil)
			}
		}
	case <-t.C:
	}
}

func (rs *recordServer) addReq(r *ssh.Request) {
	g := GlobalReq{Type: r.Type, WantReply: r.WantReply, PayloadLen: len(r.Payload)}
	if r.Type == tunnel.TowerConfigRequest {
		g.ConfigKeys, g.Config = configSummary(r.Payload)
		g.PayloadLen = 0 // depends on the CA and tokens
	}
	rs.mu.Lock()
	rs.rec.Requests = append(rs.rec.Requests, g)
	rs.mu.Unlock()
}

func (rs *recordServer) wait(t *testing.T) {
	select {
	case <-rs.done:
	case <-time.After(waitLimit):
		t.Fatal("the agent did not complete the recorded handshake")
	}
}

// wsNetConn is the Tower framing (one message per write) for the recording peers.
type wsNetConn struct {
	*websocket.Conn
	buf []byte
	wmu sync.Mutex
}

func (c *wsNetConn) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		_, m, err := c.ReadMessage()
		if err != nil {
			return 0, err
		}
		c.buf = m
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *wsNetConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsNetConn) SetDeadline(t time.Time) error { return c.UnderlyingConn().SetDeadline(t) }

// agentArgs are the flags KubeSphere's Deployment gives /agent, pointed at addr.
func agentArgs(addr, kubeconfig string) []string {
	return []string{"--name=" + cluster, "--token=" + token, "--proxy-server=http://" + addr, "--keepalive=200ms",
		"--kubesphere-service=ks-apiserver.kubesphere-system.svc:80", "--kubernetes-service=kubernetes.default.svc:443",
		"--kubeconfig=" + kubeconfig, "--v=0"}
}

func writeKubeconfig(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "kubeconfig")
	ca, _ := tunnel.NewCA("member")
	kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: m, cluster: {server: \"https://10.96.0.1:443\", certificate-authority-data: %q}}]\nusers: [{name: a, user: {}}]\ncontexts: [{name: m, context: {cluster: m, user: a}}]\ncurrent-context: m\n",
		b64(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})))
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// recordAgent records an agent started by run(addr) against a recordServer through a tee.
func recordAgent(t *testing.T, source string, run func(addr string) func()) *Recording {
	rec := &Recording{Source: source}
	rs := newRecordServer(t, rec)
	addr, stopTee, err := teeListen(rs.addr, rec)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(addr)
	rs.wait(t)
	stop()
	stopTee()
	return rec
}

// TestRecordRealAgent records kubesphere/tower v0.2.1's /agent (KSMC_TOWER_AGENT=<binary>).
func TestRecordRealAgent(t *testing.T) {
	bin := os.Getenv("KSMC_TOWER_AGENT")
	if bin == "" || !*update {
		t.Skip("set KSMC_TOWER_AGENT to the real Tower agent binary and pass -update")
	}
	kc := writeKubeconfig(t)
	rec := recordAgent(t, "kubesphere/tower v0.2.1 cmd/agent built from the tag (go1.26, GOFLAGS=-mod=mod), flags of KubeSphere's Deployment with --kubeconfig",
		func(addr string) func() {
			cmd := exec.Command(bin, agentArgs(addr, kc)...)
			cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			return func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
		})
	rec.Notes = []string{"The agent side (upgradeRequest, clientFrames, clientBanner, clientKexInit, auth, requests, channels) is the real Tower v0.2.1 agent; the server side is the recording server of test/toweragent/honest_test.go (x/crypto v0.36), not Tower's proxy.",
		"Values of Sec-WebSocket-Key, Host and the SSH cookies are random or per run and are kept by length only; Token, CAData, CertData, KeyData and BearerToken are redacted."}
	saveRecording(t, "agent-v0.2.1.json", rec)
}

func runOurAgent(t *testing.T, kc string) func(addr string) func() {
	return func(addr string) func() {
		o := toweragent.DefaultOptions()
		o.Name, o.Token, o.Server, o.KeepAlive, o.Kubeconfig = cluster, token, "http://"+addr, 200*time.Millisecond, kc
		o.KubesphereApiserverSvc, o.KubernetesApiserverSvc = "ks-apiserver.kubesphere-system.svc:80", "kubernetes.default.svc:443"
		o.Logf = func(string, ...any) {}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = toweragent.Run(ctx, o) }()
		return func() { cancel(); <-done }
	}
}

// TestToweragentMatchesRealAgent: test/toweragent does on the wire what the recorded real agent
// does (upgrade request, framing, SSH version, user and auth methods, the config request's keys
// and values, channel handling, keepalive), and its key exchange proposals meet the real proxy's.
func TestToweragentMatchesRealAgent(t *testing.T) {
	real := loadRecording(t, "agent-v0.2.1.json")
	ours := recordAgent(t, "test/toweragent", runOurAgent(t, writeKubeconfig(t)))
	if !reflect.DeepEqual(ours.UpgradeRequest.Names, real.UpgradeRequest.Names) ||
		ours.UpgradeRequest.Method != real.UpgradeRequest.Method || ours.UpgradeRequest.Path != real.UpgradeRequest.Path ||
		!reflect.DeepEqual(ours.UpgradeRequest.Values, real.UpgradeRequest.Values) {
		t.Errorf("upgrade request:\n ours %s\n real %s", ours.UpgradeRequest.RawHead, real.UpgradeRequest.RawHead)
	}
	if !reflect.DeepEqual(ours.ClientFrames, real.ClientFrames) {
		t.Errorf("client frames: ours %+v, real %+v", ours.ClientFrames, real.ClientFrames)
	}
	if ours.ClientBanner != real.ClientBanner {
		t.Errorf("client banner %q, real %q", ours.ClientBanner, real.ClientBanner)
	}
	if !reflect.DeepEqual(ours.Auth, real.Auth) {
		t.Errorf("auth: ours %+v, real %+v", ours.Auth, real.Auth)
	}
	if !reflect.DeepEqual(ours.Requests, real.Requests) {
		t.Errorf("requests:\n ours %+v\n real %+v", ours.Requests, real.Requests)
	}
	if !reflect.DeepEqual(ours.Channels, real.Channels) {
		t.Errorf("channels: ours %+v, real %+v", ours.Channels, real.Channels)
	}
	if ours.ClientKexInit == nil || real.ClientKexInit == nil {
		t.Fatal("no client KEXINIT recorded")
	}
	proxy := loadRecording(t, "proxy-v0.2.1.json")
	if bad := negotiable(ours.ClientKexInit, proxy.ServerKexInit); len(bad) > 0 {
		t.Errorf("test/toweragent cannot negotiate %v with the real Tower proxy", bad)
	}
}

// recordClient is a Tower agent that records what a proxy does: the upgrade answer, the SSH
// server's version and host key, the answer to a config request (refused with a wrong token,
// accepted with the right one), and the channels the proxy opens once a request arrives on the
// cluster's ks-apiserver listener (it dials their extra data, as Tower's agent does).
func recordClient(t *testing.T, url, listener string, rec *Recording, conf func(token string) []byte) {
	t.Helper()
	dial := func() (*websocket.Conn, error) {
		d := websocket.Dialer{ReadBufferSize: 1024, WriteBufferSize: 1024, Subprotocols: []string{toweragent.ProtocolVersion}}
		ws, _, err := d.Dial(url, http.Header{})
		return ws, err
	}
	cc := &ssh.ClientConfig{User: "", Auth: []ssh.AuthMethod{ssh.Password("")}, ClientVersion: tunnel.TowerClientVersion,
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error { rec.HostKeyType = k.Type(); return nil }}
	// Refused first (own connection, not through the tee).
	ws, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	c, _, reqs, err := ssh.NewClientConn(&wsNetConn{Conn: ws}, "", cc)
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	ok, p, err := c.SendRequest(tunnel.TowerConfigRequest, true, conf("wrong"))
	if err != nil {
		t.Fatal(err)
	}
	rec.RefusedReply = &Reply{OK: ok, Payload: string(p)}
	_ = c.Close()
}

// TestProxyMatchesRealProxy: ks-mc's proxy answers a Tower agent as the recorded real Tower proxy
// does (upgrade answer, framing, SSH version, host key type, config answers, channel type and
// extra data), and its key exchange proposals meet the real agent's.
func TestProxyMatchesRealProxy(t *testing.T) {
	real := loadRecording(t, "proxy-v0.2.1.json")
	e := newEnv(t, nil)
	ours := recordProxy(t, "ks-mc proxy", e.addr, e.cl.KubeSphereAddr().String(), token, func(tok string) []byte {
		b, _ := json.Marshal(toweragent.Config{Version: toweragent.BuildVersion, Name: cluster, Token: tok,
			KubernetesSvcHost: "10.96.0.1:443", KubeSphereSvcHost: "ks-apiserver.kubesphere-system.svc:80"})
		return b
	})
	if ours.UpgradeResponse.Status != real.UpgradeResponse.Status || !reflect.DeepEqual(ours.UpgradeResponse.Values, real.UpgradeResponse.Values) ||
		!reflect.DeepEqual(ours.UpgradeResponse.Names, real.UpgradeResponse.Names) {
		t.Errorf("upgrade response:\n ours %s\n real %s", ours.UpgradeResponse.RawHead, real.UpgradeResponse.RawHead)
	}
	if !reflect.DeepEqual(ours.ServerFrames, real.ServerFrames) {
		t.Errorf("server frames: ours %+v, real %+v", ours.ServerFrames, real.ServerFrames)
	}
	for _, c := range []struct{ name, ours, real string }{
		{"server banner", ours.ServerBanner, real.ServerBanner},
		{"host key type", ours.HostKeyType, real.HostKeyType},
	} {
		if c.ours != c.real {
			t.Errorf("%s: ours %q, real %q", c.name, c.ours, c.real)
		}
	}
	if !reflect.DeepEqual(ours.ConfigReply, real.ConfigReply) || !reflect.DeepEqual(ours.RefusedReply, real.RefusedReply) {
		t.Errorf("config answers: ours %+v %+v, real %+v %+v", ours.ConfigReply, ours.RefusedReply, real.ConfigReply, real.RefusedReply)
	}
	if !reflect.DeepEqual(ours.Channels, real.Channels) {
		t.Errorf("channels: ours %+v, real %+v", ours.Channels, real.Channels)
	}
	agent := loadRecording(t, "agent-v0.2.1.json")
	if bad := negotiable(agent.ClientKexInit, ours.ServerKexInit); len(bad) > 0 {
		t.Errorf("the real Tower agent cannot negotiate %v with ks-mc's proxy", bad)
	}
}

// recordProxy records a proxy at addr (ws://addr/) through a tee.
func recordProxy(t *testing.T, source, addr, listener, tok string, conf func(string) []byte) *Recording {
	t.Helper()
	rec := &Recording{Source: source}
	recordClient(t, "ws://"+addr+"/", listener, rec, conf)
	teeAddr, stopTee, err := teeListen(addr, rec)
	if err != nil {
		t.Fatal(err)
	}
	d := websocket.Dialer{ReadBufferSize: 1024, WriteBufferSize: 1024, Subprotocols: []string{toweragent.ProtocolVersion}}
	ws, _, err := d.Dial("ws://"+teeAddr+"/", http.Header{})
	if err != nil {
		t.Fatal(err)
	}
	cc := &ssh.ClientConfig{User: "", Auth: []ssh.AuthMethod{ssh.Password("")}, ClientVersion: tunnel.TowerClientVersion,
		HostKeyCallback: ssh.InsecureIgnoreHostKey()}
	c, chans, reqs, err := ssh.NewClientConn(&wsNetConn{Conn: ws}, "", cc)
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	ok, p, err := c.SendRequest(tunnel.TowerConfigRequest, true, conf(tok))
	if err != nil {
		t.Fatal(err)
	}
	rec.ConfigReply = &Reply{OK: ok, Payload: string(p)}
	got := make(chan Channel, 1)
	go func() {
		for ch := range chans {
			c := Channel{Type: ch.ChannelType(), Extra: string(ch.ExtraData())}
			st, creqs, err := ch.Accept()
			c.Accepted = err == nil
			if err == nil {
				go ssh.DiscardRequests(creqs)
				_ = st.Close()
			}
			select {
			case got <- c:
			default:
			}
		}
	}()
	// Requests on the cluster's ks-apiserver listener make the proxy open a channel (until one
	// arrives: the listener may answer 503 while the session is being set up).
	stopReq := make(chan struct{})
	defer close(stopReq)
	go func() {
		hc := &http.Client{Timeout: 2 * time.Second}
		for {
			if resp, err := hc.Get("http://" + listener + "/kapis/version"); err == nil {
				resp.Body.Close()
			}
			select {
			case <-stopReq:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	select {
	case ch := <-got:
		rec.Channels = append(rec.Channels, ch)
	case <-time.After(waitLimit):
		t.Fatal("the proxy opened no channel")
	}
	_ = c.Close()
	stopTee()
	return rec
}

// TestRecordRealProxy records kubesphere/tower v0.2.1's proxy (KSMC_TOWER_PROXY=host:port,
// KSMC_TOWER_TOKEN, KSMC_TOWER_LISTENER=host:kubesphereAPIServerPort of Cluster member1).
func TestRecordRealProxy(t *testing.T) {
	addr, tok, listener := os.Getenv("KSMC_TOWER_PROXY"), os.Getenv("KSMC_TOWER_TOKEN"), os.Getenv("KSMC_TOWER_LISTENER")
	if addr == "" || !*update {
		t.Skip("set KSMC_TOWER_PROXY, KSMC_TOWER_TOKEN, KSMC_TOWER_LISTENER and pass -update")
	}
	rec := recordProxy(t, "kubesphere/tower v0.2.1 cmd/proxy built from the tag (go1.26, GOFLAGS=-mod=mod, modern-go/reflect2 v1.0.2), on a sandbox host", addr, listener, tok,
		func(tk string) []byte {
			b, _ := json.Marshal(toweragent.Config{Version: toweragent.BuildVersion, Name: cluster, Token: tk,
				KubernetesSvcHost: "10.96.0.1:443", KubeSphereSvcHost: "ks-apiserver.kubesphere-system.svc:80"})
			return b
		})
	rec.Notes = []string{"The proxy side (upgradeResponse, serverFrames, serverBanner, serverKexInit, hostKeyType, configReply, refusedReply, channels) is the real Tower v0.2.1 proxy; the client side is the recording client of test/toweragent/honest_test.go (x/crypto v0.36, gorilla v1.5.4), not Tower's agent.",
		"refusedReply is the answer to a wrong token; channels: the channel Tower's proxy opened for a request on the Cluster's ks-apiserver listener (its extra data is the agent's KubeSphereSvcHost)."}
	saveRecording(t, "proxy-v0.2.1.json", rec)
}

// TestRealAgentThroughProxy runs the real Tower v0.2.1 agent (KSMC_TOWER_AGENT=<binary>) against
// ks-mc's proxy: it connects over ws:// and requests through the per-cluster listeners reach the
// member's kube-apiserver (with the agent's kubeconfig client certificate) and ks-apiserver.
func TestRealAgentThroughProxy(t *testing.T) {
	bin := os.Getenv("KSMC_TOWER_AGENT")
	if bin == "" {
		t.Skip("set KSMC_TOWER_AGENT to the real Tower agent binary")
	}
	e := newEnv(t, nil)
	clientCA, _ := tunnel.NewCA("member CA")
	certPEM, keyPEM, err := clientCA.IssueClient("tower-agent", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	_ = os.WriteFile(kc, []byte(fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: m, cluster: {server: %q, certificate-authority-data: %q}}]\nusers: [{name: a, user: {client-certificate-data: %q, client-key-data: %q}}]\ncontexts: [{name: m, context: {cluster: m, user: a}}]\ncurrent-context: m\n",
		e.kube.URL, b64(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.kube.Certificate().Raw})), b64(certPEM), b64(keyPEM))), 0o600)
	cmd := exec.Command(bin, "--name="+cluster, "--token="+token, "--proxy-server=http://"+e.addr, "--keepalive=1s",
		"--kubesphere-service="+e.ks.Listener.Addr().String(), "--kubernetes-service=kubernetes.default.svc:443", "--kubeconfig="+kc, "--v=0")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, "the real Tower agent connected", func() bool { return e.proxy.TowerAgents(cluster) == 1 })
	for i := 0; i < 20; i++ {
		resp, body := e.get("/api/v1/namespaces/default")
		if resp.StatusCode != 200 || resp.Header.Get("X-Identity") != "cert:tower-agent" {
			t.Fatalf("request %d through the real agent: %s %q as %q", i, resp.Status, body, resp.Header.Get("X-Identity"))
		}
	}
	r, err := http.Get("http://" + e.cl.KubeSphereAddr().String() + "/kapis/version")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if string(b) != "kubesphere" {
		t.Fatalf("ks-apiserver through the real agent: %q", b)
	}
	// The proxy's keepalive (every 200 ms here) is answered by the real agent: the session stays.
	ping, _, err := e.proxy.PingAgents(cluster)
	if err != nil || ping != 1 {
		t.Fatalf("ping through the real agent: %d %v", ping, err)
	}
}
