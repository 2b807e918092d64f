package tunnel

import (
	"context"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
)

// streamConn is an accepted stream with its header; the forwarder reads the header from the
// request context.
type streamConn struct {
	net.Conn
	header StreamHeader
}

type streamInfoKey struct{}

func withStreamInfo(ctx context.Context, c net.Conn) context.Context {
	if sc, ok := c.(*streamConn); ok {
		return context.WithValue(ctx, streamInfoKey{}, sc.header)
	}
	return ctx
}

func streamInfo(ctx context.Context) (StreamHeader, bool) {
	h, ok := ctx.Value(streamInfoKey{}).(StreamHeader)
	return h, ok
}

// forwarder is the agent's HTTP handler: it forwards to the kube-apiserver or ks-apiserver, the
// only two addresses the agent ever dials on the proxy's behalf.
type forwarder struct {
	log  logr.Logger
	kube *httputil.ReverseProxy
	ks   *httputil.ReverseProxy
}

// kubeTransport picks the round tripper: the agent's own credentials only for a request the proxy
// vouched for (client certificate, AuthCert) that carries no Authorization header; otherwise an
// anonymous transport that passes the caller's credentials through unchanged. Watches ride
// HTTP/2 (hundreds of them share one connection); every other request uses HTTP/1.1 keep-alive
// connections, which cost the kube-apiserver and the agent less per request than HTTP/2 (no
// per-request goroutine and frame handoffs on either side); upgrades (SPDY/WebSocket) cannot
// ride HTTP/2 anyway.
type kubeTransport struct {
	creds, anon, credsH1, anonH1 http.RoundTripper
}

func isUpgrade(r *http.Request) bool { return headerHasToken(r.Header, "Connection", "upgrade") }

// isWatch recognises a watch: ?watch=true|1 or a legacy /watch/ path.
func isWatch(r *http.Request) bool {
	if strings.Contains(r.URL.Path, "/watch/") {
		return true
	}
	if !strings.Contains(r.URL.RawQuery, "watch") {
		return false
	}
	v := r.URL.Query().Get("watch")
	return v == "true" || v == "1"
}

func (t *kubeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h, _ := streamInfo(r.Context())
	useCreds := h.Auth == AuthCert && r.Header.Get("Authorization") == ""
	switch h2 := !isUpgrade(r) && isWatch(r); {
	case useCreds && h2:
		return t.creds.RoundTrip(r)
	case useCreds:
		return t.credsH1.RoundTrip(r)
	case h2:
		return t.anon.RoundTrip(r)
	default:
		return t.anonH1.RoundTrip(r)
	}
}

func newForwarder(kc *rest.Config, ksService string, log logr.Logger) (*forwarder, error) {
	base, _, err := rest.DefaultServerUrlFor(kc)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver address: %w", err)
	}
	mk := func(c *rest.Config, h1 bool) (http.RoundTripper, error) {
		c = rest.CopyConfig(c)
		// The agent forwards any volume of traffic: client-side throttling belongs to the caller.
		c.QPS, c.Burst, c.RateLimiter = -1, 0, nil
		// A tunnel is transparent: Accept-Encoding reaches the upstream exactly as the client
		// sent it and bodies are never re-encoded. With compression enabled, Go's transport
		// would ask for gzip on a request that did not and decode the answer again.
		c.DisableCompression = true
		if h1 {
			c.TLSClientConfig.NextProtos = []string{"http/1.1"}
			return h1Transport(c)
		}
		return rest.TransportFor(c)
	}
	anonCfg := rest.AnonymousClientConfig(kc)
	kt := &kubeTransport{}
	for _, x := range []struct {
		dst *http.RoundTripper
		cfg *rest.Config
		h1  bool
	}{{&kt.creds, kc, false}, {&kt.credsH1, kc, true}, {&kt.anon, anonCfg, false}, {&kt.anonH1, anonCfg, true}} {
		if *x.dst, err = mk(x.cfg, x.h1); err != nil {
			return nil, fmt.Errorf("kube-apiserver transport: %w", err)
		}
	}
	f := &forwarder{log: log}
	f.kube = newReverseProxy(base, kt, log, "kube-apiserver")
	ksURL := &url.URL{Scheme: "http", Host: ksService}
	ksTransport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // Accept-Encoding passes verbatim; bodies are never re-encoded
	}
	f.ks = newReverseProxy(ksURL, ksTransport, log, "ks-apiserver")
	return f, nil
}

// h1IdleConnsPerHost is the HTTP/1.1 idle pool: it holds a burst of concurrent requests (the
// proxy forwards whole controllers' worth), where client-go's default of 25 would close and
// re-handshake connections after every burst.
const h1IdleConnsPerHost = 256

// h1Transport builds what rest.TransportFor builds (TLS from c, then client-go's auth, user agent
// and impersonation wrappers), with a larger idle pool. Configs whose transport client-go must
// manage itself (exec or auth-provider plugins, reloaded certificate files, custom dialers or
// transports) keep rest.TransportFor.
func h1Transport(c *rest.Config) (http.RoundTripper, error) {
	if c.ExecProvider != nil || c.AuthProvider != nil || c.CertFile != "" || c.KeyFile != "" ||
		c.Transport != nil || c.Dial != nil || c.WrapTransport != nil {
		return rest.TransportFor(c)
	}
	tlsCfg, err := rest.TLSConfigFor(c)
	if err != nil {
		return nil, err
	}
	proxy := http.ProxyFromEnvironment
	if c.Proxy != nil {
		proxy = c.Proxy
	}
	tr := &http.Transport{
		Proxy:               proxy,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        h1IdleConnsPerHost,
		MaxIdleConnsPerHost: h1IdleConnsPerHost,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // transparency: see newForwarder
	}
	return rest.HTTPWrappersForConfig(c, tr)
}

func newReverseProxy(target *url.URL, rt http.RoundTripper, log logr.Logger, name string) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The Host header names the upstream, as a client of it would.
			pr.Out.Host = ""
		},
		Transport:  rt,
		BufferPool: rpBufferPool{},
		ErrorLog:   stdlog.New(io.Discard, "", 0),
		// Watches and other unbounded responses are flushed as they arrive (ReverseProxy does so
		// for Content-Length -1); bodies with a length are copied with pooled buffers.
		FlushInterval: 0,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the caller went away
			}
			log.V(1).Info("forward failed", "target", name, "path", r.URL.Path, "err", err.Error())
			writeStatus(w, http.StatusBadGateway, "ServiceUnavailable", fmt.Sprintf("ks-mc agent: %s unreachable: %v", name, err))
		},
	}
}

func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The response may start while the request body is still arriving (the upstream answers
	// early, or echoes): an HTTP/1 handler must opt in to reading after writing, or net/http may
	// cut the body short.
	_ = http.NewResponseController(w).EnableFullDuplex()
	h, ok := streamInfo(r.Context())
	if !ok {
		writeStatus(w, http.StatusForbidden, "Forbidden", "ks-mc agent: not a tunnel stream")
		return
	}
	switch h.Target {
	case TargetKubernetes:
		if h.Auth == AuthToken && r.Header.Get("Authorization") == "" {
			writeStatus(w, http.StatusUnauthorized, "Unauthorized",
				"ks-mc proxy: present a client certificate issued by the proxy CA (the kubeconfig in the Cluster's spec.connection) or a bearer token")
			return
		}
		f.kube.ServeHTTP(w, r)
	case TargetKubeSphere:
		f.ks.ServeHTTP(w, r)
	default:
		writeStatus(w, http.StatusForbidden, "Forbidden", "ks-mc agent: unknown target")
	}
}
