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
)

// streamConn is a Tower session's stream with its header; the forwarder reads the header from the
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

// forwarder is the HTTP handler of a Tower session (the proxy serves the streams of Tower agents
// with net/http): it forwards to the kube-apiserver or ks-apiserver, the only two addresses a
// Tower session's channels reach. The ks-mc agent serves its streams with agentServer.
type forwarder struct {
	log      logr.Logger
	kube     *httputil.ReverseProxy // watches and upgrades: small buffers (rpBufferPool)
	kubeBulk *httputil.ReverseProxy // every other request: 32 KiB buffers (bulkBufferPool)
	ks       *httputil.ReverseProxy
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

// KubeUpstream is how the agent reaches its kube-apiserver: the address and the round trippers,
// built from a client configuration on the Kubernetes side (pkg/tunnel/kube.AgentUpstream). Creds
// authenticate as the agent; Anon carries no credentials of its own, so the caller's pass through.
// CredsH1 and AnonH1 are pinned to HTTP/1.1 (every request but watches, see kubeTransport).
type KubeUpstream struct {
	URL                          *url.URL
	Creds, CredsH1, Anon, AnonH1 http.RoundTripper
	// Relay, when set, lets the agent relay clients' HTTP/2 connections whole (TargetKubernetesH2).
	Relay *KubeRelay
}

// newAgentUpstreams builds the agent's two upstreams: the kube-apiserver through kubeTransport
// (its choice of credentials and of HTTP/2 or HTTP/1.1) and ks-apiserver over plain HTTP.
func newAgentUpstreams(up *KubeUpstream, ksService string) (kube, ks upstream, err error) {
	if up.URL == nil || up.Creds == nil || up.CredsH1 == nil || up.Anon == nil || up.AnonH1 == nil {
		return kube, ks, fmt.Errorf("%w: incomplete kube-apiserver upstream", ErrInvalidConfig)
	}
	kt := &kubeTransport{creds: up.Creds, credsH1: up.CredsH1, anon: up.Anon, anonH1: up.AnonH1}
	ksTransport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // Accept-Encoding passes verbatim; bodies are never re-encoded
	}
	kube = upstream{name: "kube-apiserver", target: up.URL, rt: kt}
	ks = upstream{name: "ks-apiserver", target: &url.URL{Scheme: "http", Host: ksService}, rt: ksTransport}
	return kube, ks, nil
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
			writeStatus(w, http.StatusUnauthorized, "Unauthorized", tokenStreamAdvice)
			return
		}
		if longLived(r) || f.kubeBulk == nil {
			f.kube.ServeHTTP(w, r)
			return
		}
		f.kubeBulk.ServeHTTP(w, r)
	case TargetKubeSphere:
		f.ks.ServeHTTP(w, r)
	default:
		writeStatus(w, http.StatusForbidden, "Forbidden", "ks-mc agent: unknown target")
	}
}
