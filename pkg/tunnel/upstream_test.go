package tunnel

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// testUpstream builds the agent's kube-apiserver upstream from rc for the wire tests, the way
// pkg/tunnel/kube.AgentUpstream does it for such a config (compression off, client-go transports
// for HTTP/2, plain HTTP/1.1 transports with client-go's wrappers). The wire package cannot
// import pkg/tunnel/kube (kube imports it); pkg/tunnel/kube tests AgentUpstream itself.
func testUpstream(t testing.TB, rc *rest.Config) *KubeUpstream {
	t.Helper()
	base, _, err := rest.DefaultServerUrlFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(c *rest.Config, h1 bool) http.RoundTripper {
		c = rest.CopyConfig(c)
		c.QPS, c.Burst, c.RateLimiter = -1, 0, nil
		c.DisableCompression = true
		var rt http.RoundTripper
		var err error
		if h1 {
			c.TLSClientConfig.NextProtos = []string{"http/1.1"}
			var tlsCfg *tls.Config
			if tlsCfg, err = rest.TLSConfigFor(c); err == nil {
				rt, err = rest.HTTPWrappersForConfig(c, &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConns: 256,
					MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second, DisableCompression: true})
			}
		} else {
			rt, err = rest.TransportFor(c)
		}
		if err != nil {
			t.Fatal(err)
		}
		return rt
	}
	anon := rest.AnonymousClientConfig(rc)
	up := &KubeUpstream{URL: base, Creds: mk(rc, false), CredsH1: mk(rc, true), Anon: mk(anon, false), AnonH1: mk(anon, true)}
	// The relay as pkg/tunnel/kube.relayFor builds it for a bearer-token config.
	if base.Scheme == "https" && rc.BearerToken != "" {
		tlsCfg, err := rest.TLSConfigFor(anon)
		if err != nil {
			t.Fatal(err)
		}
		tok := rc.BearerToken
		up.Relay = NewKubeRelay(base.Host, tlsCfg, func() (string, error) { return tok, nil })
	}
	return up
}
