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
// anonymous transport that passes the caller's credentials through unchanged. Upgrades
// (SPDY/WebSocket) use HTTP/1.1-only transports, since they cannot ride HTTP/2.
type kubeTransport struct {
	creds, anon, credsH1, anonH1 http.RoundTripper
}

func isUpgrade(r *http.Request) bool { return headerHasToken(r.Header, "Connection", "upgrade") }

func (t *kubeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h, _ := streamInfo(r.Context())
	useCreds := h.Auth == AuthCert && r.Header.Get("Authorization") == ""
	switch up := isUpgrade(r); {
	case useCreds && up:
		return t.credsH1.RoundTrip(r)
	case useCreds:
		return t.creds.RoundTrip(r)
	case up:
		return t.anonH1.RoundTrip(r)
	default:
		return t.anon.RoundTrip(r)
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
		if h1 {
			c.TLSClientConfig.NextProtos = []string{"http/1.1"}
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
	}
	f.ks = newReverseProxy(ksURL, ksTransport, log, "ks-apiserver")
	return f, nil
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
