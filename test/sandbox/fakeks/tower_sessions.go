package fakeks

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// towerSessions is the agent side of the stand-in Tower: while the host's tower Deployment runs
// KubeSphere's image it listens where that pod would (the host's node IP, port 8080: the tower
// Service's targetPort) and accepts the real Tower agents the sandbox runs (test/toweragent), the
// way Tower's proxy does (kubesphere/tower v0.2.1 pkg/proxy/proxy.go):
//   - GET /health answers "OK\n", GET /version the build version, anything else 404, an exact URL
//     match (handleClientHandler);
//   - a websocket upgrade with subprotocol kubesphere-v1 becomes an SSH server connection over
//     binary messages (handleWebsocket, pkg/utils/ws_conn.go), any password accepted
//     (authenticate), server version SSH-kubesphere-v1-server;
//   - the first request must be "config" (within 10s): an unknown name or a token that is not the
//     Cluster's spec.connection.token gets false "Unauthorized agent", else true;
//   - "ping" requests get true (handleSSHRequests).
//
// It opens no channel (there is no tunnel: the Cluster's kubeconfig points at the peer), and it
// refuses channels the agent opens (Tower dials them: one of its weaknesses). It closes its
// listener and every session once the tower Deployment runs something else, as the replaced pod
// would, so that the ks-mc proxy can take the port.
type towerSessions struct {
	tw *Tower

	mu       sync.Mutex
	ln       net.Listener
	srv      *http.Server
	sessions map[string]int // cluster name → live sessions
	conns    map[ssh.Conn]bool
	hostKey  ssh.Signer
}

// TowerPort is where Tower listens in its pod (the tower Service's targetPort).
const TowerPort = "8080"

const towerProtocol = "kubesphere-v1"

func (s *towerSessions) connected(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[name] > 0
}

// sync opens the listener while Tower is active and closes it (and every session) when not.
func (s *towerSessions) sync(active bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if active == (s.ln != nil) {
		return nil
	}
	if !active {
		_ = s.srv.Close()
		_ = s.ln.Close()
		for c := range s.conns {
			_ = c.Close()
		}
		s.ln, s.srv, s.conns, s.sessions = nil, nil, nil, nil
		return nil
	}
	if s.hostKey == nil {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		if s.hostKey, err = ssh.NewSignerFromKey(key); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(s.tw.NodeIP, TowerPort))
	if err != nil {
		return fmt.Errorf("listen as Tower: %w", err)
	}
	s.ln, s.sessions, s.conns = ln, map[string]int{}, map[ssh.Conn]bool{}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.handle), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return nil
}

func (s *towerSessions) handle(w http.ResponseWriter, r *http.Request) {
	if strings.ToLower(r.Header.Get("Upgrade")) == "websocket" && r.Header.Get("Sec-WebSocket-Protocol") == towerProtocol {
		s.serveAgent(w, r)
		return
	}
	switch r.URL.String() {
	case "/health":
		_, _ = w.Write([]byte("OK\n"))
	case "/version":
		_, _ = w.Write([]byte("0.0.0-rc"))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("Not Found"))
	}
}

func (s *towerSessions) serveAgent(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024, Subprotocols: []string{towerProtocol},
		CheckOrigin: func(*http.Request) bool { return true }}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	cfg := &ssh.ServerConfig{
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) { return nil, nil },
		ServerVersion:    "SSH-" + towerProtocol + "-server",
	}
	s.mu.Lock()
	cfg.AddHostKey(s.hostKey)
	s.mu.Unlock()
	conn, chans, reqs, err := ssh.NewServerConn(&wsNetConn{Conn: ws}, cfg)
	if err != nil {
		_ = ws.Close()
		return
	}
	defer conn.Close()
	var req *ssh.Request
	select {
	case req = <-reqs:
	case <-time.After(10 * time.Second):
		return
	}
	if req == nil {
		return
	}
	if req.Type != "config" {
		_ = req.Reply(false, []byte("expecting config request"))
		return
	}
	var c struct{ Name, Token string }
	if err := json.Unmarshal(req.Payload, &c); err != nil {
		return
	}
	if !s.authorized(r.Context(), c.Name, c.Token) {
		_ = req.Reply(false, []byte("Unauthorized agent"))
		fmt.Fprintf(s.tw.Log, "tower: agent for cluster %s refused: Unauthorized agent\n", c.Name)
		return
	}
	if !s.add(c.Name, conn) {
		return
	}
	defer s.remove(c.Name, conn)
	_ = req.Reply(true, nil)
	go func() {
		for ch := range chans {
			_ = ch.Reject(ssh.Prohibited, "the stand-in opens no channels")
		}
	}()
	go func() {
		for r := range reqs {
			if r.WantReply {
				_ = r.Reply(r.Type == "ping", nil)
			}
		}
	}()
	_ = conn.Wait()
}

// authorized: Tower's rule, a Cluster it serves with exactly that token (a plain comparison).
func (s *towerSessions) authorized(ctx context.Context, name, token string) bool {
	c, err := s.tw.Host.Dynamic.Resource(ClusterGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false
	}
	want, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
	return want != "" && token == want
}

func (s *towerSessions) add(name string, c ssh.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		return false
	}
	s.conns[c] = true
	s.sessions[name]++
	return true
}

func (s *towerSessions) remove(name string, c ssh.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil || !s.conns[c] {
		return
	}
	delete(s.conns, c)
	s.sessions[name]--
}

// wsNetConn is a net.Conn over a websocket: one binary message per Write, Reads concatenate
// messages (Tower pkg/utils/ws_conn.go).
type wsNetConn struct {
	*websocket.Conn
	buf []byte
}

func (c *wsNetConn) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		_, msg, err := c.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return 0, io.EOF
			}
			return 0, err
		}
		c.buf = msg
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *wsNetConn) Write(p []byte) (int, error) {
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsNetConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
