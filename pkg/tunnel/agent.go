package tunnel

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/hashicorp/yamux"
)

// AgentConfig configures the member side.
type AgentConfig struct {
	Config *Config
	// ProxyURL is the proxy's published address, http:// or https://.
	ProxyURL string
	// ClusterName is the Cluster's name on the host.
	ClusterName string
	// Token returns the agent token; called before every connection attempt so that a token
	// file can change without a restart.
	Token func() (string, error)
	// CACertHash pins the proxy's CA ("sha256:<hex>"); without it https uses RootCAs (or the
	// system roots) with host name verification.
	CACertHash string
	RootCAs    *x509.CertPool
	// Kubernetes is how the agent reaches and authenticates to its kube-apiserver (built from a
	// client configuration by pkg/tunnel/kube.AgentUpstream).
	Kubernetes *KubeUpstream
	// KubeSphereService is ks-apiserver's host:port (plain HTTP).
	KubeSphereService string
	// Dial overrides how the proxy connection is dialed (tests); by default TCP, through
	// HTTPS_PROXY/HTTP_PROXY (CONNECT) when the environment names one for the proxy URL.
	Dial func(ctx context.Context) (net.Conn, error)
	// OnState, when set, is told about every connection attempt's outcome (nil error: connected)
	// and every disconnect.
	OnState func(AgentEvent)
	Version string
	// Logger receives the agent's logs (discarded when nil); "kubectl ks-mc agent" hands in
	// klog.Background().WithName("agent"), so --v and --vmodule apply.
	Logger *logr.Logger
}

// AgentEvent reports a state change of the agent's connection.
type AgentEvent struct {
	Connected bool
	// Err is the reason of a failed attempt or of a disconnect (nil for a normal connect).
	Err error
	// Attempt counts failed attempts since the last successful one.
	Attempt int
	// Wait is the backoff before the next attempt (after a failure or disconnect).
	Wait time.Duration
}

// DefaultAgentConfig returns an AgentConfig with DefaultConfig and the ks-apiserver Service.
func DefaultAgentConfig() *AgentConfig {
	return &AgentConfig{Config: DefaultConfig(), KubeSphereService: "ks-apiserver.kubesphere-system.svc:80"}
}

// Validate reports the first invalid field.
func (c *AgentConfig) Validate() error {
	if c == nil {
		return fmt.Errorf("%w: nil agent config", ErrInvalidConfig)
	}
	u, err := url.Parse(c.ProxyURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: proxy address %q must be http(s)://host[:port]", ErrInvalidConfig, c.ProxyURL)
	}
	if c.ClusterName == "" {
		return fmt.Errorf("%w: cluster name is required", ErrInvalidConfig)
	}
	if c.Token == nil {
		return fmt.Errorf("%w: a token source is required", ErrInvalidConfig)
	}
	if c.CACertHash != "" {
		if _, err := ParseCACertHash(c.CACertHash); err != nil {
			return err
		}
		if u.Scheme != "https" {
			return fmt.Errorf("%w: --ca-cert-hash needs an https:// proxy address", ErrInvalidConfig)
		}
	}
	if c.Kubernetes == nil {
		return fmt.Errorf("%w: a kube-apiserver client config is required", ErrInvalidConfig)
	}
	if _, _, err := net.SplitHostPort(c.KubeSphereService); err != nil {
		return fmt.Errorf("%w: kubesphere service %q must be host:port", ErrInvalidConfig, c.KubeSphereService)
	}
	return c.Config.Validate()
}

// Agent dials out to the proxy, keeps the session up forever and serves the streams the proxy
// opens, forwarding each to the kube-apiserver or ks-apiserver only.
type Agent struct {
	cfg      AgentConfig
	log      logr.Logger
	id       string
	proxyURL *url.URL
	pin      string
	srv      *agentServer

	mu      sync.Mutex
	current *yamux.Session
	warn    logThrottle
}

// NewAgent validates cfg and builds the forwarders.
func NewAgent(cfg *AgentConfig) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: *cfg}
	a.log = logr.Discard()
	if cfg.Logger != nil {
		a.log = *cfg.Logger
	}
	a.log = a.log.WithValues("cluster", cfg.ClusterName)
	a.proxyURL, _ = url.Parse(cfg.ProxyURL)
	if cfg.CACertHash != "" {
		a.pin, _ = ParseCACertHash(cfg.CACertHash)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	a.id = hex.EncodeToString(id[:])
	kube, ks, err := newAgentUpstreams(cfg.Kubernetes, cfg.KubeSphereService)
	if err != nil {
		return nil, err
	}
	a.srv = newAgentServer(kube, ks, cfg.Config.StreamOpenTimeout, a.log)
	if r := cfg.Kubernetes.Relay; r != nil && r.Dial != nil && r.Token != nil {
		a.srv.relay, a.srv.dialData = r, a.dialData
	}
	return a, nil
}

// Run connects and serves until ctx is cancelled, reconnecting with full-jitter backoff after
// every failure (auth failures included: they are reported, never fatal). On cancellation it sends
// GoAway, drains open streams for up to Config.DrainTimeout and returns nil.
func (a *Agent) Run(ctx context.Context) error {
	defer a.srv.shutdown()
	attempt := 0
	for {
		sess, err := a.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait := a.cfg.Config.Backoff.DurationAfter(attempt, err)
			attempt++
			a.reportFailure(err, attempt, wait)
			a.emit(AgentEvent{Err: err, Attempt: attempt, Wait: wait})
			if !sleepCtx(ctx, wait) {
				return nil
			}
			continue
		}
		a.srv.setKeepAlives(true)
		a.log.Info("connected to proxy", "proxy", a.proxyURL.Host, "agent", a.id)
		a.emit(AgentEvent{Connected: true, Attempt: attempt})
		start := time.Now()
		drained := make(chan struct{})
		stop := context.AfterFunc(ctx, func() { a.drain(sess); close(drained) })
		err = a.serve(sess)
		if !stop() {
			<-drained
			return nil // the deferred shutdown waits for what is left of the requests
		}
		lived := time.Since(start)
		if lived >= a.cfg.Config.Backoff.ResetAfter {
			attempt = 0
		}
		wait := a.cfg.Config.Backoff.Duration(attempt)
		if b := a.cfg.Config.Backoff; lived >= time.Second && b.MaxRefused > 0 && wait > b.MaxRefused {
			// A session that lived ended (a proxy restart, most likely): retry soon; refused
			// attempts keep the wait short until the proxy is back, other failures back off.
			wait = time.Duration(mrand.Int64N(int64(b.MaxRefused) + 1))
		}
		attempt++
		a.log.Info("disconnected from proxy, reconnecting", "reason", errString(err), "after", wait.Round(time.Millisecond))
		a.emit(AgentEvent{Err: err, Attempt: attempt, Wait: wait})
		if !sleepCtx(ctx, wait) {
			return nil
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

func (a *Agent) reportFailure(err error, attempt int, wait time.Duration) {
	kv := []any{"attempt", attempt, "retryIn", wait.Round(time.Millisecond)}
	switch {
	case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrUnknownCluster):
		a.log.Error(err, "proxy refused the agent: check the token Secret and the Cluster on the host", kv...)
	case errors.Is(err, ErrCAHashMismatch):
		a.log.Error(err, "proxy certificate does not match --ca-cert-hash", kv...)
	default:
		a.log.Error(err, "connect to proxy", kv...)
	}
}

func (a *Agent) emit(e AgentEvent) {
	if a.cfg.OnState != nil {
		a.cfg.OnState(e)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// serve accepts the proxy's streams until the session ends. A cancelled Run drains the
// session (see drain), which ends it.
func (a *Agent) serve(sess *yamux.Session) error {
	a.mu.Lock()
	a.current = sess
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.current = nil
		a.mu.Unlock()
	}()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			if cerr := sessionErr(sess); cerr != nil {
				return cerr
			}
			return err
		}
		if n := sess.NumStreams(); n > a.cfg.Config.MaxStreamsPerSession {
			// Over the cap: answer at once (no header read, nothing forwarded), keep serving.
			a.warn.log(a.log, "refused stream: too many open streams", "open", n, "max", a.cfg.Config.MaxStreamsPerSession)
			go func() {
				_ = writeAnswer(st, ErrStreamLimit)
				_ = st.Close()
			}()
			continue
		}
		go a.handleStream(st)
	}
}

// sessionErr explains why a session closed (keepalive timeout, ...), when yamux says so.
func sessionErr(sess *yamux.Session) error {
	select {
	case <-sess.CloseChan():
	default:
		return nil
	}
	if _, err := sess.Ping(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
		return err
	}
	return nil
}

// drain is the SIGTERM path: GoAway (the proxy routes new streams to other agents of the
// cluster and yamux refuses new ones), idle keep-alive streams are closed, requests and upgraded
// connections in flight get up to Config.DrainTimeout, then the session is closed.
func (a *Agent) drain(sess *yamux.Session) {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.Config.DrainTimeout)
	defer cancel()
	_ = sess.GoAway()
	a.srv.setKeepAlives(false)
	a.log.Info("draining", "streams", sess.NumStreams(), "deadline", a.cfg.Config.DrainTimeout)
	// Relayed clients on data connections count too: told GOAWAY, each closes once its streams
	// have ended (closing the session would cut them: the proxy ties them to it).
	waitStreamsDone(ctx, func() int64 {
		if sess.IsClosed() {
			return 0
		}
		return int64(sess.NumStreams()) + int64(a.srv.relayCount())
	})
	_ = sess.Close()
}

// handleStream reads the stream header, answers it and serves the stream's HTTP/1.1 requests in
// the same goroutine (agentServer).
func (a *Agent) handleStream(st net.Conn) {
	_ = st.SetReadDeadline(time.Now().Add(a.cfg.Config.StreamOpenTimeout))
	br := bufio.NewReaderSize(st, 256)
	h, err := readStreamHeader(br)
	if err != nil {
		a.log.Info("refused stream", "reason", err.Error())
		_ = writeAnswer(st, err)
		_ = st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if h.Target == TargetControl {
		_ = writeAnswer(st, nil)
		// The proxy is draining: stop keeping idle connections so that its streams end as soon as
		// their requests do.
		a.log.Info("proxy is going away: closing idle streams")
		a.srv.setKeepAlives(false)
		_ = st.Close()
		return
	}
	if h.Target == TargetKubernetesH2 {
		a.srv.serveKubeRelay(st, br, h)
		return
	}
	// The answer leaves with the first response bytes (one frame instead of two); the proxy reads
	// it before the response.
	pw := &prefixWriter{Conn: st, prefix: []byte(answerOK + "\n")}
	a.srv.serveStream(pw, br, h)
}

// connect dials the proxy, performs TLS and the upgrade, and starts the yamux session.
func (a *Agent) connect(ctx context.Context) (*yamux.Session, error) {
	conn, err := a.upgrade(ctx, TunnelPath, UpgradeProtocol, AgentIDHeader+": "+a.id+"\r\n"+a.featuresHeader())
	if err != nil {
		return nil, err
	}
	sess, err := yamux.Server(&coalescingConn{Conn: conn}, a.cfg.Config.yamuxConfig())
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return sess, nil
}

// dialData opens a data connection for the relay id (proxy_relay.go).
func (a *Agent) dialData(ctx context.Context, id string) (net.Conn, error) {
	return a.upgrade(ctx, RelayPath, RelayUpgrade, RelayHeader+": "+id+"\r\n")
}

// upgrade dials the proxy, performs TLS and the upgrade to protocol on path with the agent's
// token (extra: more header lines), and returns the connection, its deadlines cleared.
func (a *Agent) upgrade(ctx context.Context, path, protocol, extra string) (net.Conn, error) {
	token, err := a.cfg.Token()
	if err != nil {
		return nil, fmt.Errorf("read agent token: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Config.HandshakeTimeout)
	defer cancel()
	conn, err := a.dial(ctx)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = conn.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = conn.SetDeadline(dl)
	}
	if a.proxyURL.Scheme == "https" {
		host := a.proxyURL.Hostname()
		var tcfg *tls.Config
		if a.pin != "" {
			tcfg = pinnedTLSConfig(a.pin, host)
		} else {
			tcfg = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, RootCAs: a.cfg.RootCAs, NextProtos: []string{"http/1.1"}}
		}
		tc, bc := tlsClientBatched(conn, tcfg, false)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("tls handshake with proxy %s: %w", a.proxyURL.Host, err)
		}
		conn = bc
	}
	req := "GET " + path + " HTTP/1.1\r\n" +
		"Host: " + a.proxyURL.Host + "\r\n" +
		"Connection: Upgrade\r\n" +
		"Upgrade: " + protocol + "\r\n" +
		ClusterHeader + ": " + a.cfg.ClusterName + "\r\n" +
		"User-Agent: ks-mc-agent/" + a.cfg.Version + "\r\n" +
		extra +
		"Authorization: Bearer " + token + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, fmt.Errorf("send upgrade request to proxy %s: %w", a.proxyURL.Host, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: read upgrade response from %s: %w", ErrHandshake, a.proxyURL.Host, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, a.upgradeRefused(resp)
	}
	if !headerHasToken(resp.Header, "Upgrade", protocol) {
		return nil, fmt.Errorf("%w: proxy %s switched to %q", ErrHandshake, a.proxyURL.Host, resp.Header.Get("Upgrade"))
	}
	_ = conn.SetDeadline(time.Time{})
	ok = true
	// Read through br: the proxy may already have sent bytes that br buffered.
	return &bufferedConn{Conn: conn, r: br}, nil
}

// featuresHeader is the upgrade request's FeaturesHeader line ("" when the agent offers none).
func (a *Agent) featuresHeader() string {
	if a.srv.relay == nil {
		return ""
	}
	return FeaturesHeader + ": " + FeatureKubeH2 + "\r\n"
}

// upgradeRefused is the error of an upgrade the proxy did not switch (connect).
func (a *Agent) upgradeRefused(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_ = resp.Body.Close()
	msg := strings.TrimSpace(string(body))
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("%w by proxy %s (401): %s", ErrUnauthorized, a.proxyURL.Host, msg)
	case http.StatusServiceUnavailable:
		// The proxy is starting, a standby replica or draining: its body says which.
		return fmt.Errorf("%w (%w): proxy %s answered 503: %s", ErrProxyUnavailable, ErrHandshake, a.proxyURL.Host, msg)
	case http.StatusForbidden:
		if strings.Contains(msg, "unknown_cluster") {
			return fmt.Errorf("%w %q at proxy %s (403)", ErrUnknownCluster, a.cfg.ClusterName, a.proxyURL.Host)
		}
		return fmt.Errorf("%w: proxy %s answered 403: %s", ErrHandshake, a.proxyURL.Host, msg)
	case http.StatusTooManyRequests:
		return fmt.Errorf("%w: proxy %s answered 429", ErrRateLimited, a.proxyURL.Host)
	}
	return fmt.Errorf("%w: proxy %s answered %s to the upgrade (an L7 proxy that drops Upgrade?): %s",
		ErrHandshake, a.proxyURL.Host, resp.Status, msg)
}
