package tunnel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/crypto/ssh"
)

// TowerPolicy is implemented by an Authenticator that knows which Clusters were moved to the ks-mc
// agent (the Controller: annotation AgentProtocolAnnotation=ks-mc). Tower agents of those are
// refused even with the right token (downgrade protection), and their sessions are drained.
type TowerPolicy interface {
	TowerAgentAllowed(cluster string) bool
}

// towerSession is one connected Tower agent.
type towerSession struct {
	cluster  string
	remote   string
	since    time.Time
	conn     *ssh.ServerConn
	token    string
	identity string
	targets  *towerTargets
	log      logr.Logger

	// The proxy speaks HTTP to the agent's two targets itself (the agent only dials TCP): each
	// stream the per-cluster listener asks for is one end of a pipe whose other end this server
	// serves with a forwarder dialing through SSH channels.
	srv     *http.Server
	streams *connListener
	open    atomic.Int64 // streams (pipes) open
	maxOpen int

	revoked  atomic.Bool
	draining atomic.Bool
	closed   chan struct{}
}

func (s *towerSession) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// close ends the session (idempotent through the SSH connection).
func (s *towerSession) close() {
	_ = s.conn.Close()
}

// setKeepAlives turns HTTP keep-alive of the session's streams on or off: off closes idle streams
// at once and the others after their response, so the listener's next request opens a new stream,
// on the session that should carry it (a ks-mc session, a newer Tower session).
func (s *towerSession) setKeepAlives(on bool) { s.srv.SetKeepAlivesEnabled(on) }

// dialChannel opens an SSH channel to one of the session's two configured targets. The address
// comes from the agent's config, never from a request.
func (s *towerSession) dialChannel(target string) (net.Conn, error) {
	ch, reqs, err := s.conn.OpenChannel(TowerChannelType, []byte(target))
	if err != nil {
		return nil, fmt.Errorf("open channel to the tower agent: %w", err)
	}
	go ssh.DiscardRequests(reqs)
	return &channelConn{Channel: ch, local: s.conn.LocalAddr(), remote: s.conn.RemoteAddr()}, nil
}

// stream returns the proxy's end of a new stream of this session (a pipe served by s.srv).
func (s *towerSession) stream(h StreamHeader) (net.Conn, error) {
	if s.maxOpen > 0 && int(s.open.Load()) >= s.maxOpen {
		return nil, &streamLimitError{scope: "session"}
	}
	a, b := net.Pipe()
	s.open.Add(1)
	if !s.streams.push(&streamConn{Conn: b, header: h}) {
		s.open.Add(-1)
		_ = a.Close()
		_ = b.Close()
		return nil, ErrNoAgent
	}
	return &countedConn{Conn: a, dec: &s.open}, nil
}

// channelConn is an SSH channel as a net.Conn (deadlines are not supported: the transports above
// it have their own timeouts and the session's keepalive bounds a dead peer).
type channelConn struct {
	ssh.Channel
	local, remote net.Addr
}

func (c *channelConn) LocalAddr() net.Addr              { return c.local }
func (c *channelConn) RemoteAddr() net.Addr             { return c.remote }
func (c *channelConn) SetDeadline(time.Time) error      { return nil }
func (c *channelConn) SetReadDeadline(time.Time) error  { return nil }
func (c *channelConn) SetWriteDeadline(time.Time) error { return nil }

// newTowerForwarder builds the HTTP forwarder of a Tower session: what the ks-mc agent does in the
// member, done by the proxy over the Tower agent's TCP channels. Towards the kube-apiserver it
// speaks TLS (the CA the agent sent, else the system roots) and, for a caller with a proxy-CA
// client certificate and no Authorization header, authenticates with the agent's credentials (its
// service-account token or client certificate); a caller's own Authorization passes through.
func newTowerForwarder(s *towerSession, log logr.Logger) *forwarder {
	t := s.targets
	dial := func(target string) func(context.Context, string, string) (net.Conn, error) {
		return func(context.Context, string, string) (net.Conn, error) { return s.dialChannel(target) }
	}
	host, _, _ := net.SplitHostPort(t.kube)
	mk := func(h1, creds bool) http.RoundTripper {
		tlsCfg := &tls.Config{RootCAs: t.roots, ServerName: host, MinVersion: tls.VersionTLS12}
		if creds && t.hasCert {
			tlsCfg.Certificates = []tls.Certificate{*t.cert}
		}
		if h1 {
			tlsCfg.NextProtos = []string{"http/1.1"}
		}
		tr := &http.Transport{
			DialContext:         dial(t.kube),
			TLSClientConfig:     tlsCfg,
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConns:        towerIdleConns,
			MaxIdleConnsPerHost: towerIdleConns,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true, // transparency: see newForwarder
			ForceAttemptHTTP2:   !h1,
		}
		if creds && t.bearer != "" && !t.hasCert {
			return &bearerRoundTripper{token: t.bearer, rt: tr}
		}
		return tr
	}
	kt := &kubeTransport{creds: mk(false, true), credsH1: mk(true, true), anon: mk(false, false), anonH1: mk(true, false)}
	f := &forwarder{log: log}
	f.kube = newReverseProxy(&url.URL{Scheme: "https", Host: t.kube}, kt, log, "kube-apiserver")
	f.kubeBulk = withBulkBuffers(f.kube)
	ksTransport := &http.Transport{
		DialContext:         dial(t.ks),
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	f.ks = newReverseProxy(&url.URL{Scheme: "http", Host: t.ks}, ksTransport, log, "ks-apiserver")
	return f
}

// bearerRoundTripper adds the agent's service-account token to a request without Authorization
// (kubeTransport uses it only for callers with a proxy-CA client certificate).
type bearerRoundTripper struct {
	token string
	rt    http.RoundTripper
}

func (b *bearerRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Authorization") != "" {
		return b.rt.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.rt.RoundTrip(r)
}

// towerIdleConns is the idle pool towards the member's kube-apiserver (as the ks-mc agent's).
const towerIdleConns = 256

// towerState is the proxy's Tower side.
type towerState struct {
	reg        *towerRegistry
	signer     ssh.Signer
	handshakes chan struct{} // semaphore of handshakes in progress
	warn       logThrottle
}

func newTowerState() (*towerState, error) {
	// Tower's proxy generates an ECDSA P-256 host key at every start (agents accept any key).
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate tower host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(k)
	if err != nil {
		return nil, fmt.Errorf("tower host key: %w", err)
	}
	return &towerState{reg: newTowerRegistry(), signer: signer, handshakes: make(chan struct{}, maxTowerHandshakes)}, nil
}

func (p *Proxy) towerEnabled() bool { return p.cfg.TowerAgents != TowerAgentsNever }

// towerAllowed applies the downgrade protection: the Authenticator's TowerPolicy, if any.
func (p *Proxy) towerAllowed(cluster string) bool {
	if !p.towerEnabled() {
		return false
	}
	if tp, ok := p.cfg.Authenticator.(TowerPolicy); ok {
		return tp.TowerAgentAllowed(cluster)
	}
	return true
}

// Protocol returns the protocol of the sessions that serve cluster: ProtocolKsMC while a ks-mc
// agent is connected, else ProtocolTower while a Tower agent is, else "".
func (p *Proxy) Protocol(cluster string) string {
	switch {
	case p.reg.count(cluster) > 0:
		return ProtocolKsMC
	case p.tower.reg.count(cluster) > 0:
		return ProtocolTower
	}
	return ""
}

// TowerAgents returns how many Tower agents of cluster are connected.
func (p *Proxy) TowerAgents(cluster string) int { return p.tower.reg.count(cluster) }

// dialTower opens a stream on the cluster's newest Tower session.
func (p *Proxy) dialTower(cluster string, h StreamHeader) (net.Conn, error) {
	s := p.tower.reg.pick(cluster)
	if s == nil {
		return nil, ErrNoAgent
	}
	var c net.Conn
	var err error
	if p.cfg.MaxStreamsPerCluster > 0 && p.towerOpen(cluster) >= int64(p.cfg.MaxStreamsPerCluster) {
		err = &streamLimitError{scope: "cluster"}
	} else {
		c, err = s.stream(h)
	}
	if err != nil {
		var sl *streamLimitError
		if errors.As(err, &sl) {
			p.metrics.streamLimited.add(sl.scope)
			p.warn.log(p.log, "stream refused: too many open streams", "cluster", cluster, "per", sl.scope, "protocol", ProtocolTower)
		}
		return nil, fmt.Errorf("cluster %q: %w", cluster, err)
	}
	p.metrics.streamsTotal.Add(1)
	p.metrics.protoStreams.add(ProtocolTower)
	p.metrics.streamsOpen.Add(1)
	return &countedConn{Conn: c, dec: &p.metrics.streamsOpen}, nil
}

// towerOpen is the number of streams open over the cluster's Tower sessions.
func (p *Proxy) towerOpen(cluster string) int64 {
	var n int64
	for _, s := range p.tower.reg.sessions(cluster) {
		n += s.open.Load()
	}
	return n
}

// ksmcSessionsChanged is called after a ks-mc session of cluster connected or left: while one is
// up, Tower sessions take no new requests (their idle streams close, busy ones after the response).
func (p *Proxy) ksmcSessionsChanged(cluster string) {
	up := p.reg.count(cluster) > 0
	newest := p.tower.reg.pick(cluster)
	for _, s := range p.tower.reg.sessions(cluster) {
		s.setKeepAlives(!up && s == newest)
	}
}

// revalidateTower closes the Tower sessions of cluster whose token or Cluster no longer admits
// them, and drains those of a Cluster moved to the ks-mc agent (or all, with TowerAgentsNever).
func (p *Proxy) revalidateTower(cluster string) int {
	closed := 0
	for _, s := range p.tower.reg.sessions(cluster) {
		if s.revoked.Load() {
			continue
		}
		reason := p.revokeCheck(cluster, s.token, s.identity)
		if reason != "" {
			s.revoked.Store(true)
			p.metrics.revokedSessions.add(reason)
			s.log.Info("tower agent session revoked: closing it", "reason", reason)
			s.close()
			closed++
			continue
		}
		if !p.towerAllowed(cluster) && s.draining.CompareAndSwap(false, true) {
			s.log.Info("tower agent session drained: the Cluster is served by the ks-mc agent now")
			go p.drainTower(s, p.cfg.Config.DrainTimeout)
		}
	}
	return closed
}

// drainTower lets a Tower session's open streams finish (up to timeout), then closes it.
func (p *Proxy) drainTower(s *towerSession, timeout time.Duration) {
	s.setKeepAlives(false)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for s.open.Load() > 0 {
		select {
		case <-deadline.C:
			s.close()
			return
		case <-s.closed:
			return
		case <-t.C:
		}
	}
	s.close()
}

// pingTower sends the proxy's keepalive request and waits for any answer.
func pingTower(s *towerSession, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, _, err := s.conn.SendRequest(towerKeepaliveRequest, true, nil)
		done <- err
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return 0, fmt.Errorf("tower agent keepalive: %w", err)
		}
		return time.Since(start), nil
	case <-t.C:
		return 0, fmt.Errorf("tower agent keepalive: no answer within %s", timeout)
	case <-s.closed:
		return 0, fmt.Errorf("tower agent keepalive: %w", net.ErrClosed)
	}
}

// keepaliveTower pings the agent every KeepAliveInterval and drops the session when an answer
// takes longer than KeepAliveTimeout: a half-open Tower session is gone within interval + timeout
// (Tower's proxy never pings).
func (p *Proxy) keepaliveTower(s *towerSession) {
	t := time.NewTicker(p.cfg.Config.KeepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		if _, err := pingTower(s, p.cfg.Config.KeepAliveTimeout); err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			s.log.Info("tower agent session dropped: keepalive unanswered", "err", err.Error())
			p.metrics.towerDropped.Add(1)
			s.close()
			return
		}
	}
}

// serveTowerRequests answers the agent's global requests: "ping" true (as Tower does), anything
// else (a second "config" included) false.
func serveTowerRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if r.WantReply {
			_ = r.Reply(r.Type == TowerPingRequest, nil)
		}
	}
}

// refuseTowerChannels refuses every channel the agent opens: Tower's proxy dials whatever host:port
// such a channel names on the host network; ks-mc's dials nothing for an agent.
func (p *Proxy) refuseTowerChannels(s *towerSession, chans <-chan ssh.NewChannel) {
	for ch := range chans {
		p.metrics.refusedAgentStreams.Add(1)
		p.tower.warn.log(s.log, "refused a channel opened by the tower agent", "type", len(ch.ChannelType()))
		_ = ch.Reject(ssh.Prohibited, "the proxy opens no connection for agents")
	}
}

// startTowerSession registers an admitted agent and serves it until its connection ends.
func (p *Proxy) startTowerSession(s *towerSession, reqs <-chan *ssh.Request, chans <-chan ssh.NewChannel) {
	f := newTowerForwarder(s, s.log)
	s.streams = newConnListener()
	s.srv = &http.Server{
		Handler:           f,
		ReadHeaderTimeout: p.cfg.Config.StreamOpenTimeout,
		ConnContext:       withStreamInfo,
		ErrorLog:          stdlog.New(io.Discard, "", 0),
	}
	go func() { _ = s.srv.Serve(s.streams) }()
	go serveTowerRequests(reqs)
	go p.refuseTowerChannels(s, chans)
	older, n := p.tower.reg.add(s)
	p.metrics.sessionsTotal.Add(1)
	p.metrics.protoSessions.add(ProtocolTower)
	// The newest session takes the new requests; older ones finish theirs and stay as a fallback
	// until their agent goes (a rollout restart) or the keepalive finds them dead.
	for _, o := range older {
		o.setKeepAlives(false)
	}
	if p.reg.count(s.cluster) > 0 {
		s.setKeepAlives(false)
	}
	s.log.Info("tower agent connected", "agents", n+p.reg.count(s.cluster))
	p.notify(s.cluster)
	go p.keepaliveTower(s)
	go func() {
		_ = s.conn.Wait()
		close(s.closed)
		_ = s.srv.Close()
		_ = s.streams.Close()
		n := p.tower.reg.remove(s)
		if newest := p.tower.reg.pick(s.cluster); newest != nil && p.reg.count(s.cluster) == 0 {
			newest.setKeepAlives(true)
		}
		s.log.Info("tower agent disconnected", "towerAgents", n, "after", time.Since(s.since).Round(time.Millisecond))
		p.notify(s.cluster)
	}()
}
