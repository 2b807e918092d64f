package kube

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/net/http/httpproxy"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// AgentUpstream builds the agent's way to its kube-apiserver from kc (the member's in-cluster
// configuration): the server address and four round trippers, with the agent's credentials and
// without (anonymous: the caller's credentials pass through), each for HTTP/2 (watches) and pinned
// to HTTP/1.1 (everything else; see tunnel.KubeUpstream).
func AgentUpstream(kc *rest.Config) (*tunnel.KubeUpstream, error) {
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
	up := &tunnel.KubeUpstream{URL: base}
	for _, x := range []struct {
		dst *http.RoundTripper
		cfg *rest.Config
		h1  bool
	}{{&up.Creds, kc, false}, {&up.CredsH1, kc, true}, {&up.Anon, anonCfg, false}, {&up.AnonH1, anonCfg, true}} {
		if *x.dst, err = mk(x.cfg, x.h1); err != nil {
			return nil, fmt.Errorf("kube-apiserver transport: %w", err)
		}
	}
	if up.Relay, err = relayFor(kc, base); err != nil {
		return nil, fmt.Errorf("kube-apiserver relay: %w", err)
	}
	return up, nil
}

// relayFor builds the agent's HTTP/2 connection relay (tunnel.KubeRelay) when kc's credentials are
// a bearer token (a ServiceAccount's, as in a member's pod) and the kube-apiserver is reached
// over TLS without a proxy; nil otherwise (client certificates, exec or auth-provider plugins,
// basic auth, impersonation, custom transports), and the agent then serves requests one by one.
func relayFor(kc *rest.Config, base *url.URL) (*tunnel.KubeRelay, error) {
	if base.Scheme != "https" || (kc.BearerToken == "" && kc.BearerTokenFile == "") ||
		kc.ExecProvider != nil || kc.AuthProvider != nil || kc.Username != "" || kc.Password != "" ||
		kc.CertFile != "" || kc.KeyFile != "" || len(kc.CertData) > 0 || len(kc.KeyData) > 0 ||
		kc.Impersonate.UserName != "" || kc.Impersonate.UID != "" || len(kc.Impersonate.Groups) > 0 || len(kc.Impersonate.Extra) > 0 ||
		kc.Transport != nil || kc.WrapTransport != nil || kc.Dial != nil || kc.Proxy != nil {
		return nil, nil
	}
	// The environment as it is now (http.ProxyFromEnvironment reads it once per process).
	if p, err := httpproxy.FromEnvironment().ProxyFunc()(base); err != nil || p != nil {
		return nil, nil
	}
	tlsCfg, err := rest.TLSConfigFor(rest.AnonymousClientConfig(kc))
	if err != nil || tlsCfg == nil {
		return nil, err
	}
	addr := base.Host
	if base.Port() == "" {
		addr = net.JoinHostPort(base.Hostname(), "443")
	}
	token := func() (string, error) { return kc.BearerToken, nil }
	if kc.BearerTokenFile != "" {
		// As client-go does: the file is re-read at most once a minute, so a projected token's
		// rotation is followed.
		src := transport.NewCachedFileTokenSource(kc.BearerTokenFile)
		token = func() (string, error) {
			t, err := src.Token()
			if err != nil {
				return "", err
			}
			return t.AccessToken, nil
		}
	}
	return tunnel.NewKubeRelay(addr, tlsCfg, token), nil
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
		DisableCompression:  true, // transparency: see AgentUpstream
	}
	return rest.HTTPWrappersForConfig(c, tr)
}

// NewAgent builds the member side's agent with kc as its way to the kube-apiserver
// (AgentUpstream) and, unless cfg.Logger is set, klog.Background().WithName("agent") as its
// logger, so --v and --vmodule apply.
func NewAgent(cfg *tunnel.AgentConfig, kc *rest.Config) (*tunnel.Agent, error) {
	up, err := AgentUpstream(kc)
	if err != nil {
		return nil, err
	}
	c := *cfg
	c.Kubernetes = up
	if c.Logger == nil {
		log := klog.Background().WithName("agent")
		c.Logger = &log
	}
	return tunnel.NewAgent(&c)
}
