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
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// StreamDialer opens streams to a cluster's agent; *Proxy implements it.
type StreamDialer interface {
	DialStream(ctx context.Context, cluster string, h StreamHeader) (net.Conn, error)
}

// ClusterListenerConfig configures the two per-cluster listeners.
type ClusterListenerConfig struct {
	Cluster     string
	BindAddress string
	// KubePort serves TLS for the kube-apiserver; KubeSpherePort serves plain HTTP for
	// ks-apiserver. 0 picks a free port (tests).
	KubePort, KubeSpherePort int
	// TLS must hold the listener's certificate and ClientCAs (the proxy CA); ClientAuth is forced
	// to VerifyClientCertIfGiven: a connection with a verified client certificate is AuthCert, one
	// without must send its own bearer token on every request (AuthToken).
	TLS              *tls.Config
	Dialer           StreamDialer
	HandshakeTimeout time.Duration
	Logger           logr.Logger
	// NoRelay forwards every request one by one, even for HTTP/2 clients whose cluster has an agent
	// that relays connections (listener_relay.go); tests and the bench compare the two.
	NoRelay bool
}

// ClusterListener is a running pair of per-cluster listeners. The kube listener terminates TLS
// and HTTP (HTTP/2 or HTTP/1.1 towards the client) and forwards each request over a pool of
// streams, one HTTP/1.1 connection each, so many requests and watches share one client
// connection and no TLS handshake is repeated per stream. The ks listener splices bytes.
type ClusterListener struct {
	cfg      ClusterListenerConfig
	kube, ks net.Listener
	tlsCfg   *tls.Config
	// handoff feeds srv the connections the kube listener does not relay.
	handoff *connListener
	srv     *http.Server
	// certRP and tokenRP forward upgrades (exec, attach, port-forward): a ReverseProxy with an
	// http.Transport, which splices the switched connection.
	certRP  *httputil.ReverseProxy
	tokenRP *httputil.ReverseProxy
	// certFwd and tokenFwd forward every other request over their own pools of idle streams
	// (listener_client.go).
	certFwd, tokenFwd *kubeForwarder
	wg                sync.WaitGroup
	mu                sync.Mutex
	conns             map[net.Conn]struct{}
	closed            bool
}

// ListenCluster binds both listeners and starts serving them.
func ListenCluster(cfg ClusterListenerConfig) (*ClusterListener, error) {
	if cfg.TLS == nil || cfg.Dialer == nil || cfg.Cluster == "" {
		return nil, fmt.Errorf("%w: cluster listener needs a cluster, TLS config and dialer", ErrInvalidConfig)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	t := cfg.TLS.Clone()
	t.ClientAuth = tls.VerifyClientCertIfGiven
	// A client certificate of the proxy CA is accepted only by the listener of the cluster it was
	// issued for (its ClusterURI): the kubeconfig of one Cluster opens no other.
	cluster, logger := cfg.Cluster, cfg.Logger
	t.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || BoundToCluster(cs.PeerCertificates[0], cluster) {
			return nil
		}
		logger.Info("refused a client certificate issued for another cluster", "cluster", cluster)
		return ErrCertOtherCluster
	}
	t.NextProtos = []string{"h2", "http/1.1"}
	if t.MinVersion == 0 {
		t.MinVersion = tls.VersionTLS12
	}
	kl, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddress, strconv.Itoa(cfg.KubePort)))
	if err != nil {
		return nil, fmt.Errorf("listen for cluster %q kube-apiserver: %w", cfg.Cluster, err)
	}
	kl2, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddress, strconv.Itoa(cfg.KubeSpherePort)))
	if err != nil {
		_ = kl.Close()
		return nil, fmt.Errorf("listen for cluster %q ks-apiserver: %w", cfg.Cluster, err)
	}
	l := &ClusterListener{cfg: cfg, kube: kl, ks: kl2, tlsCfg: t, handoff: &connListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: kl.Addr()}, conns: map[net.Conn]struct{}{}}
	l.certRP = l.reverseProxy(StreamHeader{Target: TargetKubernetes, Auth: AuthCert})
	l.tokenRP = l.reverseProxy(StreamHeader{Target: TargetKubernetes, Auth: AuthToken})
	l.certFwd = newKubeForwarder(l, StreamHeader{Target: TargetKubernetes, Auth: AuthCert})
	l.tokenFwd = newKubeForwarder(l, StreamHeader{Target: TargetKubernetes, Auth: AuthToken})
	l.srv = &http.Server{
		Handler:           l,
		TLSConfig:         t,
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	l.wg.Add(3)
	go func() {
		defer l.wg.Done()
		_ = l.srv.Serve(l.handoff)
	}()
	go l.acceptLoop(kl, l.serveKube)
	go l.acceptLoop(kl2, func(c net.Conn) { l.forward(c, StreamHeader{Target: TargetKubeSphere, Auth: AuthNone}) })
	return l, nil
}

// reverseProxy forwards to the agent over streams with header h. Streams are kept as idle
// keep-alive connections and reused; cert and token requests never share a stream.
func (l *ClusterListener) reverseProxy(h StreamHeader) *httputil.ReverseProxy {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return l.cfg.Dialer.DialStream(ctx, l.cfg.Cluster, h)
		},
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// Requests are small and large bodies bypass the buffer: a watch holds 1 KiB, not 4.
		WriteBufferSize: 1024,
		// The response is read through this buffer; bulk reads bypass it (the reverse proxy reads
		// 32 KiB at once), so an idle watch holds 1 KiB, not 4.
		ReadBufferSize: 1024,
	}
	target := &url.URL{Scheme: "http", Host: TargetKubernetes}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
		},
		Transport:  tr,
		BufferPool: rpBufferPool{},
		// Cut watches are normal (clients go away, agents reconnect); failures that matter reach
		// ErrorHandler.
		ErrorLog:     log.New(io.Discard, "", 0),
		ErrorHandler: l.forwardError,
	}
}

// forwardError answers a request that could not be forwarded: 503 when the cluster has no agent
// or no stream to spare, 502 otherwise, nothing when the client went away.
func (l *ClusterListener) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	if errors.Is(err, ErrStreamLimit) {
		writeStatus(w, http.StatusServiceUnavailable, "ServiceUnavailable",
			fmt.Sprintf("ks-mc proxy: cluster %q: too many open streams, retry later", l.cfg.Cluster))
		return
	}
	if errors.Is(err, ErrNoAgent) || errors.Is(err, ErrGoAway) {
		writeStatus(w, http.StatusServiceUnavailable, "ServiceUnavailable",
			fmt.Sprintf("ks-mc proxy: cluster %q: no agent connected", l.cfg.Cluster))
		return
	}
	l.cfg.Logger.V(1).Info("forward to agent failed", "cluster", l.cfg.Cluster, "err", err.Error())
	writeStatus(w, http.StatusBadGateway, "ServiceUnavailable",
		fmt.Sprintf("ks-mc proxy: cluster %q: %v", l.cfg.Cluster, err))
}

// ServeHTTP picks the stream mode from the TLS state: a client certificate verified against the
// proxy CA (AuthCert) or none (AuthToken: the agent demands the caller's own Authorization).
func (l *ClusterListener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		// An HTTP/1.1 client's request body may still be arriving when the response starts: opt
		// in to reading after writing (HTTP/2 always is), or net/http may cut the body short.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	cert := r.TLS != nil && len(r.TLS.PeerCertificates) > 0
	if isUpgrade(r) || r.Method == http.MethodConnect {
		if cert {
			l.certRP.ServeHTTP(w, r)
		} else {
			l.tokenRP.ServeHTTP(w, r)
		}
		return
	}
	if cert {
		l.certFwd.serve(w, r)
	} else {
		l.tokenFwd.serve(w, r)
	}
}

// KubeAddr and KubeSphereAddr are the bound addresses.
func (l *ClusterListener) KubeAddr() net.Addr       { return l.kube.Addr() }
func (l *ClusterListener) KubeSphereAddr() net.Addr { return l.ks.Addr() }

// Close stops both listeners and closes every connection they accepted.
func (l *ClusterListener) Close() error {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	l.conns = map[net.Conn]struct{}{}
	l.mu.Unlock()
	_ = l.srv.Close()
	_ = l.kube.Close()
	_ = l.ks.Close()
	_ = l.handoff.Close()
	for c := range conns {
		_ = c.Close()
	}
	for _, rp := range []*httputil.ReverseProxy{l.certRP, l.tokenRP} {
		rp.Transport.(*http.Transport).CloseIdleConnections()
	}
	l.certFwd.pool.close()
	l.tokenFwd.pool.close()
	l.wg.Wait()
	return nil
}

// StopAccepting closes the listeners but lets established connections finish (graceful drain).
// Idle streams are closed, and streams are no longer kept idle once their request is done.
func (l *ClusterListener) StopAccepting() {
	_ = l.kube.Close()
	_ = l.ks.Close()
	l.certFwd.pool.close()
	l.tokenFwd.pool.close()
}

func (l *ClusterListener) track(c net.Conn, add bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if add {
		if l.closed {
			return false
		}
		l.conns[c] = struct{}{}
	} else {
		delete(l.conns, c)
	}
	return true
}

// acceptLoop accepts on ln and serves each connection with serve in a goroutine of its own,
// tracked until serve returns.
func (l *ClusterListener) acceptLoop(ln net.Listener, serve func(net.Conn)) {
	defer l.wg.Done()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off briefly, like net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !l.track(c, true) {
			_ = c.Close()
			return
		}
		go func() {
			defer l.track(c, false)
			serve(c)
		}()
	}
}

func (l *ClusterListener) forward(c net.Conn, h StreamHeader) {
	st, err := l.cfg.Dialer.DialStream(context.Background(), l.cfg.Cluster, h)
	if err != nil {
		l.cfg.Logger.V(1).Info("no stream to agent", "cluster", l.cfg.Cluster, "err", err.Error())
		// Let the client's request arrive so the error reads as an HTTP answer, not a reset.
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 4096)
		_, _ = c.Read(buf)
		httpError(c, http.StatusServiceUnavailable, "ServiceUnavailable",
			fmt.Sprintf("ks-mc proxy: cluster %q: no agent connected", l.cfg.Cluster))
		_ = c.Close()
		return
	}
	splice(c, st)
}
