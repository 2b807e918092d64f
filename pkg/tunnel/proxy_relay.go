package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// Data connections. A relayed HTTP/2 client (listener_relay.go) is best carried on a TCP
// connection of its own between the agent and the proxy, not on a yamux stream: a stream costs,
// per write on each side, a hand-off to yamux's send loop and, per read, one from its receive loop
// (four goroutine wake-ups per request and process, more than the copying itself). So the proxy
// names a relay id in the kubernetes-h2 stream header; the agent dials the proxy port again,
// upgrades to RelayUpgrade on RelayPath with the Cluster's token and the id, and relays the client
// on that connection; the stream only carried the request to dial. When the agent cannot (a
// standby replica answers, the port is not reachable twice, the id expired) it answers OK on the
// stream and relays there.

const (
	// RelayPath is the proxy's endpoint for data connections.
	RelayPath = "/ksmc/v1/relay"
	// RelayUpgrade is the Upgrade value of a data connection.
	RelayUpgrade = "ksmc-relay.v1"
	// RelayHeader carries the relay id of the stream that asked for the data connection.
	RelayHeader = "X-Ksmc-Relay"
)

// RelayDialer is what a kube listener needs of its dialer to relay a client on a data connection;
// *Proxy implements it. Without it the listener relays on a stream (DialStream).
type RelayDialer interface {
	DialRelay(ctx context.Context, cluster, auth string) (net.Conn, error)
}

// relayWaits holds the data connections the proxy waits for, by relay id, and those it carries.
type relayWaits struct {
	mu      sync.Mutex
	pending map[string]*pendingRelay
}

type pendingRelay struct {
	cluster string
	ch      chan net.Conn // one data connection, then nothing
	claimed bool
}

func newRelayID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (w *relayWaits) add(id string, pr *pendingRelay) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pending == nil {
		w.pending = map[string]*pendingRelay{}
	}
	w.pending[id] = pr
}

// remove forgets id; a data connection that arrived for it after all is closed.
func (w *relayWaits) remove(id string) {
	w.mu.Lock()
	pr := w.pending[id]
	delete(w.pending, id)
	w.mu.Unlock()
	if pr == nil {
		return
	}
	select {
	case c := <-pr.ch:
		_ = c.Close()
	default:
	}
}

// claim takes the wait for id of cluster: once only, and only by that cluster's agent.
func (w *relayWaits) claim(id, cluster string) *pendingRelay {
	w.mu.Lock()
	defer w.mu.Unlock()
	pr := w.pending[id]
	if pr == nil || pr.claimed || pr.cluster != cluster {
		return nil
	}
	pr.claimed = true
	return pr
}

// DialRelay opens a kubernetes-h2 stream for a client of cluster and returns the connection that
// carries the client from now on: the agent's data connection, or the stream itself when the
// agent answered OK on it.
func (p *Proxy) DialRelay(ctx context.Context, cluster, auth string) (net.Conn, error) {
	id := newRelayID()
	pr := &pendingRelay{cluster: cluster, ch: make(chan net.Conn, 1)}
	p.relays.add(id, pr)
	defer p.relays.remove(id)
	st, as, err := p.openStreamOn(ctx, cluster, StreamHeader{Target: TargetKubernetesH2, Auth: auth, Relay: id}.encode(), true)
	if err != nil {
		return nil, err
	}
	p.metrics.targetStreams.add(TargetKubernetesH2)
	answer := make(chan error, 1)
	go func() {
		_, err := st.Read(nil) // sends the header, reads the answer
		answer <- err
	}()
	data := func(dc net.Conn) (net.Conn, error) {
		// The 101 leaves here, before anything of the client's: the agent ends the stream only
		// once it read it, so the data connection is always in hand when the stream ends.
		_ = st.Close()
		if _, err := io.WriteString(dc, switchingTo(RelayUpgrade)); err != nil {
			_ = dc.Close()
			return nil, err
		}
		p.metrics.relayConns.Add(1)
		return p.carry(dc, as), nil
	}
	select {
	case dc := <-pr.ch:
		return data(dc)
	case err := <-answer:
		if err == nil {
			return st, nil
		}
		// The agent ends the stream unanswered once it read the 101 on its data connection, which
		// only the case above writes; so an ended stream with a connection waiting is not a race.
		select {
		case dc := <-pr.ch:
			return data(dc)
		default:
		}
		_ = st.Close()
		return nil, err
	case <-ctx.Done():
		_ = st.Close()
		return nil, ctx.Err()
	}
}

// carry ties a data connection to the agent's session: when the session ends (the agent went
// away, its token was revoked, the proxy shuts down), so does the connection.
func (p *Proxy) carry(dc net.Conn, as *agentSession) net.Conn {
	c := &dataConn{Conn: dc, done: make(chan struct{})}
	go func() {
		select {
		case <-as.sess.CloseChan():
			_ = c.Close()
		case <-c.done:
		}
	}()
	return c
}

type dataConn struct {
	net.Conn
	once sync.Once
	done chan struct{}
}

func (c *dataConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}

// serveRelay admits an agent's data connection (the same checks as the tunnel's upgrade) and
// hands it to the DialRelay waiting for its id.
func (p *Proxy) serveRelay(w http.ResponseWriter, r *http.Request) {
	a, ok := p.admit(w, r, RelayUpgrade)
	if !ok {
		return
	}
	id := r.Header.Get(RelayHeader)
	var pr *pendingRelay
	if validRelayID(id) {
		pr = p.relays.claim(id, a.cluster)
	}
	if pr == nil {
		// Expired, used already, or another cluster's: the agent relays on the stream.
		a.log.V(1).Info("data connection refused: no relay of this cluster waits for it")
		http.Error(w, "no such relay", http.StatusNotFound)
		return
	}
	if c, ok := hijackAgent(w, a.log); ok {
		pr.ch <- c // DialRelay answers 101 (or remove closes it, when it gave up)
	}
}

// hijackAgent takes an admitted agent's connection from net/http: deadlines cleared, large TLS
// writes batched (tlsbatch.go), what net/http read ahead still to be read.
func hijackAgent(w http.ResponseWriter, log logr.Logger) (net.Conn, bool) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be upgraded", http.StatusInternalServerError)
		return nil, false
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		log.Error(err, "hijack agent connection")
		return nil, false
	}
	_ = conn.SetDeadline(time.Time{})
	c := tlsBatched(conn)
	if brw.Reader.Buffered() > 0 {
		c = &bufferedConn{Conn: c, r: brw.Reader}
	}
	return c, true
}

// switchingTo is the 101 answer of an upgrade to protocol.
func switchingTo(protocol string) string {
	return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + protocol + "\r\n\r\n"
}
