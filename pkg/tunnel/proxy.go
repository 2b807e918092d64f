package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/hashicorp/yamux"
	"golang.org/x/time/rate"
)

// ProxyConfig configures the host side.
type ProxyConfig struct {
	Config        *Config
	Authenticator Authenticator
	// Version is served on /version.
	Version string
	// TLS, when set, serves the proxy port with TLS. Plain HTTP is still answered on the same port
	// (the first byte tells them apart) for /health, /readyz and /version, so kubelet probes and
	// Tower-style http:// probes work; the agent endpoint then refuses plaintext unless
	// AllowPlaintextAgents.
	TLS *tls.Config
	// AllowPlaintextAgents accepts agents over plain HTTP (the token then travels in clear text).
	AllowPlaintextAgents bool
	// FailureRate and FailureBurst rate-limit failed agent authentications per remote IP and
	// cluster name; FailureKeys caps how many such buckets are kept (least recently used evicted).
	FailureRate  rate.Limit
	FailureBurst int
	FailureKeys  int
	// MaxHeaderBytes caps the request header of the proxy port (431 beyond it).
	MaxHeaderBytes int
	// IdleTimeout closes keep-alive connections of the proxy port that send no request for that
	// long (probes); requests must arrive in full within Config.HandshakeTimeout.
	IdleTimeout time.Duration
	// MaxStreamsPerCluster caps the streams open at once over all sessions of one cluster
	// (Config.MaxStreamsPerSession caps each session).
	MaxStreamsPerCluster int
	// OnAgentChange is called (outside any lock) after an agent of cluster connected or left;
	// read the current number with Proxy.Agents.
	OnAgentChange func(cluster string)
	// TowerAgents is TowerAgentsAuto ("" too: serve Tower v0.2.x agents of Clusters not moved to
	// the ks-mc agent, over plain HTTP and TLS) or TowerAgentsNever (refuse them all).
	TowerAgents string
	// Logger receives the proxy's logs (discarded when nil). The Kubernetes side hands in
	// klog.Background().WithName("proxy"), so --v and --vmodule apply (pkg/tunnel/kube.RunProxy).
	Logger *logr.Logger
}

// Proxy port defaults.
const (
	DefaultFailureKeys          = 10000
	DefaultMaxHeaderBytes       = 8 << 10
	DefaultProxyIdleTimeout     = 60 * time.Second
	DefaultMaxStreamsPerCluster = 4096
)

// DefaultProxyConfig returns a ProxyConfig with DefaultConfig, 1 failure/s with burst 10 over at
// most 10000 buckets, 8 KiB request headers, 60 s idle timeout, 4096 streams per cluster.
func DefaultProxyConfig() *ProxyConfig {
	return &ProxyConfig{Config: DefaultConfig(), FailureRate: 1, FailureBurst: 10, FailureKeys: DefaultFailureKeys,
		MaxHeaderBytes: DefaultMaxHeaderBytes, IdleTimeout: DefaultProxyIdleTimeout, MaxStreamsPerCluster: DefaultMaxStreamsPerCluster}
}

// Validate reports the first invalid field.
func (c *ProxyConfig) Validate() error {
	if c == nil {
		return fmt.Errorf("%w: nil proxy config", ErrInvalidConfig)
	}
	if c.Authenticator == nil {
		return fmt.Errorf("%w: proxy needs an authenticator", ErrInvalidConfig)
	}
	if c.FailureRate <= 0 || c.FailureBurst <= 0 || c.FailureKeys <= 0 {
		return fmt.Errorf("%w: failure rate, burst and keys must be positive", ErrInvalidConfig)
	}
	if c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 1<<20 {
		return fmt.Errorf("%w: max header bytes must be between 1 KiB and 1 MiB", ErrInvalidConfig)
	}
	if c.IdleTimeout <= 0 {
		return fmt.Errorf("%w: idle timeout must be positive", ErrInvalidConfig)
	}
	if c.MaxStreamsPerCluster <= 0 {
		return fmt.Errorf("%w: max streams per cluster must be positive", ErrInvalidConfig)
	}
	if c.TowerAgents != "" && c.TowerAgents != TowerAgentsAuto && c.TowerAgents != TowerAgentsNever {
		return fmt.Errorf("%w: tower agents must be %s or %s", ErrInvalidConfig, TowerAgentsAuto, TowerAgentsNever)
	}
	if c.TLS == nil && !c.AllowPlaintextAgents {
		return fmt.Errorf("%w: without TLS the proxy must allow plaintext agents explicitly", ErrInvalidConfig)
	}
	return c.Config.Validate()
}

// Proxy is the host side: it accepts agents on TunnelPath, serves /health, /readyz and /version,
// and opens streams to agents for the per-cluster listeners. It never accepts streams opened by an
// agent.
type Proxy struct {
	cfg     ProxyConfig
	log     logr.Logger
	reg     *registry
	metrics *proxyMetrics
	limiter *failureLimiter
	mux     *http.ServeMux
	tower   *towerState
	relays  relayWaits // data connections awaited (proxy_relay.go)

	mu       sync.Mutex
	servers  []*http.Server
	draining atomic.Bool
	standby  atomic.Bool
	starting atomic.Bool
	warn     logThrottle
}

// SetStarting makes the agent endpoint answer 503 "proxy is starting" (its Cluster cache is not
// synced yet), so agents retry soon instead of being refused as unknown.
func (p *Proxy) SetStarting(v bool) { p.starting.Store(v) }

// SetStandby makes the agent endpoint answer 503 (a proxy replica that is not the leader), so
// agents retry until they reach the leader.
func (p *Proxy) SetStandby(v bool) { p.standby.Store(v) }

// NewProxy validates cfg and builds a Proxy.
func NewProxy(cfg *ProxyConfig) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Proxy{cfg: *cfg, reg: newRegistry(cfg.Config.MaxStreamsPerSession, cfg.MaxStreamsPerCluster), metrics: &proxyMetrics{}}
	p.log = logr.Discard()
	if cfg.Logger != nil {
		p.log = *cfg.Logger
	}
	p.limiter = newFailureLimiter(cfg.FailureRate, cfg.FailureBurst, cfg.FailureKeys)
	var err error
	if p.tower, err = newTowerState(); err != nil {
		return nil, err
	}
	p.mux = http.NewServeMux()
	p.mux.HandleFunc("/health", p.serveHealth)
	p.mux.HandleFunc("/healthz", p.serveHealth)
	p.mux.HandleFunc(ReadyPath, p.serveReady)
	p.mux.HandleFunc("/version", p.serveVersion)
	p.mux.HandleFunc(TunnelPath, p.serveTunnel)
	p.mux.HandleFunc(RelayPath, p.serveRelay)
	return p, nil
}

// Handler serves the proxy port's HTTP routes (anything else is 404), and Tower agents' websocket
// upgrades on any path (as Tower's proxy does) unless ProxyConfig.TowerAgents is never.
func (p *Proxy) Handler() http.Handler { return http.HandlerFunc(p.serveHTTP) }

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if p.towerEnabled() && isTowerUpgrade(r) {
		p.serveTower(w, r)
		return
	}
	p.mux.ServeHTTP(w, r)
}

// MetricsHandler serves the Prometheus metrics. It is not on the proxy port: the metrics name every
// connected cluster, and the proxy port answers anyone who can reach it (no name oracle, spec §6).
func (p *Proxy) MetricsHandler() http.Handler { return http.HandlerFunc(p.serveMetrics) }

// Agents returns how many agents of cluster are connected (ks-mc and Tower agents).
func (p *Proxy) Agents(cluster string) int { return p.reg.count(cluster) + p.tower.reg.count(cluster) }

// Serve accepts connections on l until it is closed (TLS and plain HTTP, see ProxyConfig.TLS).
func (p *Proxy) Serve(l net.Listener) error {
	srv := &http.Server{
		Handler:           p.Handler(),
		ReadHeaderTimeout: p.cfg.Config.HandshakeTimeout,
		// A request (an upgrade has no body) must arrive and be answered within the handshake
		// timeout; the deadlines are cleared once a connection becomes a tunnel session.
		ReadTimeout:    p.cfg.Config.HandshakeTimeout,
		WriteTimeout:   p.cfg.Config.HandshakeTimeout,
		IdleTimeout:    p.cfg.IdleTimeout,
		MaxHeaderBytes: p.cfg.MaxHeaderBytes,
		// Handshake errors of probes and scanners are noise; refusals are logged by serveTunnel.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p.mu.Lock()
	p.servers = append(p.servers, srv)
	p.mu.Unlock()
	if p.cfg.TLS != nil {
		l = newSniffListener(l, p.cfg.TLS, p.cfg.Config.HandshakeTimeout)
	}
	err := srv.Serve(l)
	if err == http.ErrServerClosed {
		return nil
	}
	return err
}

func (p *Proxy) serveHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "OK\n")
}

func (p *Proxy) serveVersion(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	v := p.cfg.Version
	if v == "" {
		v = "unknown"
	}
	_, _ = io.WriteString(w, v+"\n")
}

func (p *Proxy) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	p.metrics.write(w, p.reg.snapshot(), p.tower.reg.snapshot())
	WriteRuntimeMetrics(w)
}

func remoteIP(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// refusedAnswer is the one answer to every refused credential: an unknown cluster, a wrong or
// missing token and a malformed cluster name look the same from outside (no name oracle).
const refusedAnswer = "Unauthorized: unknown cluster or wrong token"

// serveTunnel authenticates an agent and turns the connection into a yamux session.
func (p *Proxy) serveTunnel(w http.ResponseWriter, r *http.Request) {
	if a, ok := p.admit(w, r, UpgradeProtocol); ok {
		p.startSession(w, r, a.cluster, a.token, a.identity, a.ip, a.log)
	}
}

// startSession upgrades an admitted agent's connection (serveTunnel) and runs its yamux session
// until it closes.
func (p *Proxy) startSession(w http.ResponseWriter, r *http.Request, cluster, token, identity, ip string, log logr.Logger) {
	c, ok := hijackAgent(w, log)
	if !ok {
		return
	}
	if _, err := io.WriteString(c, switchingTo(UpgradeProtocol)); err != nil {
		_ = c.Close()
		return
	}
	sess, err := yamux.Client(&coalescingConn{Conn: c}, p.cfg.Config.yamuxConfig())
	if err != nil {
		_ = c.Close()
		log.Error(err, "start session")
		return
	}
	as := &agentSession{cluster: cluster, agentID: sanitizeAgentID(r.Header.Get(AgentIDHeader)), remote: ip, since: time.Now(),
		sess: sess, token: token, identity: identity, relayH2: headerHasToken(r.Header, FeaturesHeader, FeatureKubeH2)}
	n := p.reg.add(as)
	p.metrics.sessionsTotal.Add(1)
	p.metrics.protoSessions.add(ProtocolKsMC)
	p.ksmcSessionsChanged(cluster)
	log.Info("agent connected", "agent", as.agentID, "agents", n)
	p.notify(cluster)
	go p.refuseAgentStreams(as, log)
	go func() {
		<-sess.CloseChan()
		n := p.reg.remove(as)
		p.ksmcSessionsChanged(cluster)
		log.Info("agent disconnected", "agent", as.agentID, "agents", n, "after", time.Since(as.since).Round(time.Millisecond))
		p.notify(cluster)
	}()
}

func (p *Proxy) notify(cluster string) {
	if p.cfg.OnAgentChange != nil {
		p.cfg.OnAgentChange(cluster)
	}
}

// refuseAgentStreams closes every stream the agent opens: the proxy dials nothing on behalf of an
// agent.
func (p *Proxy) refuseAgentStreams(as *agentSession, log logr.Logger) {
	for {
		st, err := as.sess.AcceptStream()
		if err != nil {
			return
		}
		p.metrics.refusedAgentStreams.Add(1)
		log.Info("refused a stream opened by the agent", "agent", as.agentID)
		_ = st.Close()
	}
}

// DialStream opens a stream to an agent of cluster (StreamHeader), its answer checked on the first
// Read. Tower sessions serve only while no ks-mc session can, and never a relay (kubernetes-h2).
func (p *Proxy) DialStream(ctx context.Context, cluster string, h StreamHeader) (net.Conn, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	relay := h.Target == TargetKubernetesH2
	c, err := p.openStream(ctx, cluster, h.encode(), relay)
	if err == nil {
		p.metrics.targetStreams.add(h.Target)
	}
	if !relay && err != nil && (errors.Is(err, ErrNoAgent) || errors.Is(err, ErrGoAway)) && p.tower.reg.count(cluster) > 0 {
		if tc, terr := p.dialTower(cluster, h); terr == nil || !errors.Is(terr, ErrNoAgent) {
			return tc, terr
		}
	}
	return c, err
}

// openStream writes a raw header (tests use it to send what DialStream refuses to).
func (p *Proxy) openStream(ctx context.Context, cluster string, header []byte, relayH2 bool) (net.Conn, error) {
	c, _, err := p.openStreamOn(ctx, cluster, header, relayH2)
	return c, err
}

// openStreamOn is openStream that also returns the session the stream is on.
func (p *Proxy) openStreamOn(ctx context.Context, cluster string, header []byte, relayH2 bool) (net.Conn, *agentSession, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	st, as, err := p.reg.open(cluster, relayH2)
	if err != nil {
		var sl *streamLimitError
		if errors.As(err, &sl) {
			p.metrics.streamLimited.add(sl.scope)
			p.warn.log(p.log, "stream refused: too many open streams", "cluster", cluster, "per", sl.scope)
		}
		return nil, nil, fmt.Errorf("cluster %q: %w", cluster, err)
	}
	p.metrics.streamsTotal.Add(1)
	p.metrics.protoStreams.add(ProtocolKsMC)
	p.metrics.streamsOpen.Add(1)
	// The header leaves with the first payload (one frame instead of two), or before the first
	// Read when the caller reads first.
	pw := &prefixWriter{Conn: st, prefix: header}
	return &countedConn{Conn: &proxyStream{Conn: pw, flush: pw.flush}, dec: &p.metrics.streamsOpen}, as, nil
}

// Shutdown stops accepting agents, sends GoAway on every session, waits for open streams to finish
// until ctx is done (or Config.DrainTimeout passed), then closes the sessions.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.draining.Store(true)
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Config.DrainTimeout)
	defer cancel()
	p.mu.Lock()
	servers := p.servers
	p.mu.Unlock()
	for _, s := range servers {
		_ = s.Shutdown(ctx)
	}
	sessions := p.reg.all()
	for _, s := range sessions {
		// Tell the agent to close idle keep-alive streams, then refuse streams it might open.
		if st, err := s.sess.OpenStream(); err == nil {
			_, _ = st.Write(StreamHeader{Target: TargetControl, Auth: ControlGoAway}.encode())
			_ = st.Close()
		}
		_ = s.sess.GoAway()
	}
	towers := p.tower.reg.all()
	for _, s := range towers {
		s.draining.Store(true)
		s.setKeepAlives(false)
	}
	waitStreamsDone(ctx, func() int64 {
		var open int64
		for _, s := range sessions {
			if !s.sess.IsClosed() {
				open += int64(s.sess.NumStreams())
			}
		}
		for _, s := range towers {
			if !s.isClosed() {
				open += s.open.Load()
			}
		}
		return open
	})
	for _, s := range sessions {
		_ = s.sess.Close()
	}
	for _, s := range towers {
		s.close()
	}
	return nil
}

// waitStreamsDone polls open (the streams still open on the sessions being drained, both
// protocols) until it is zero or ctx ends.
func waitStreamsDone(ctx context.Context, open func() int64) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for open() != 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// countedConn decrements a gauge once when closed.
type countedConn struct {
	net.Conn
	dec  *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.dec.Add(-1) })
	return c.Conn.Close()
}
