package kube

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// TestAgentUpstreamRelay: the agent offers the HTTP/2 relay only for a bearer-token configuration
// over TLS without a proxy (its token can then be added to requests frame by frame); every other
// kind of credential keeps the request-by-request path.
func TestAgentUpstreamRelay(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("sa-token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca, err := tunnel.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueClusterClient("c", "agent", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	base := func() *rest.Config {
		return &rest.Config{Host: "https://10.0.0.1:6443", TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	}
	for _, tc := range []struct {
		name  string
		tweak func(*rest.Config)
		relay bool
		token string
	}{
		{"token file (a pod's ServiceAccount)", func(c *rest.Config) { c.BearerTokenFile = tokenFile }, true, "sa-token-1"},
		{"static token", func(c *rest.Config) { c.BearerToken = "static" }, true, "static"},
		{"client certificate", func(c *rest.Config) { c.CertData, c.KeyData = certPEM, keyPEM }, false, ""},
		{"basic auth", func(c *rest.Config) { c.Username, c.Password = "u", "p" }, false, ""},
		{"exec plugin", func(c *rest.Config) {
			c.BearerToken = "t"
			c.ExecProvider = &clientcmdapi.ExecConfig{Command: "true", APIVersion: "client.authentication.k8s.io/v1"}
		}, false, ""},
		{"impersonation", func(c *rest.Config) { c.BearerToken = "t"; c.Impersonate.UserName = "bob" }, false, ""},
		{"plain http", func(c *rest.Config) { c.Host = "http://10.0.0.1:8080"; c.BearerToken = "t" }, false, ""},
		{"no credentials", func(*rest.Config) {}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.tweak(c)
			up, err := AgentUpstream(c)
			if err != nil {
				t.Fatal(err)
			}
			if (up.Relay != nil) != tc.relay {
				t.Fatalf("relay offered: %v, want %v", up.Relay != nil, tc.relay)
			}
			if up.Relay == nil {
				return
			}
			if got, err := up.Relay.Token(); err != nil || got != tc.token {
				t.Fatalf("token %q %v, want %q", got, err, tc.token)
			}
		})
	}
	t.Run("HTTPS_PROXY for the kube-apiserver", func(t *testing.T) {
		t.Setenv("HTTPS_PROXY", "http://proxy.example:3128")
		t.Setenv("NO_PROXY", "")
		c := base()
		c.BearerToken = "t"
		up, err := AgentUpstream(c)
		if err != nil || up.Relay != nil {
			t.Fatalf("relay %v (err %v), want none through a proxy", up.Relay, err)
		}
	})
}
