package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkSmallGET measures one small GET (the namespace handler: a 50-byte JSON answer) through
// the per-cluster listener (TLS, bearer token), the proxy, a TLS tunnel session and the agent, and
// the same GET direct to the backend. Everything runs in one process: subtract "direct" for what
// the tunnel adds. seq: one request at a time; par32: 32 concurrent clients on one connection pool.
func BenchmarkSmallGET(b *testing.B) {
	h := newHarness(b, "tls")
	h.logs.quiet = true
	ready(b, h)
	pool := x509.NewCertPool()
	pool.AddCert(h.backend.kube.Certificate())
	// A service-account token is a JWT of about a kilobyte: it makes the request header larger
	// than a 1 KiB write buffer.
	jwt := "eyJ" + strings.Repeat("x", 1100)
	for _, proto := range []string{"h2", "h1", "h2-jwt"} {
		h2 := proto != "h1"
		token := userToken
		if proto == "h2-jwt" {
			token = jwt
		}
		for _, target := range []string{"tunnel", "direct"} {
			url, cfg := h.kubeURL("/api/v1/namespaces/default"), h.adminTLSOrAnon(false)
			if target == "direct" {
				url, cfg = h.backend.kube.URL+"/api/v1/namespaces/default", &tls.Config{RootCAs: pool}
			}
			c := rawClient(cfg, h2)
			get := func(b *testing.B) {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.Run(proto+"/"+target+"/seq", func(b *testing.B) {
				get(b) // connections up before the clock starts
				b.ReportAllocs()
				for b.Loop() {
					get(b)
				}
			})
			b.Run(proto+"/"+target+"/par32", func(b *testing.B) {
				get(b)
				b.ReportAllocs()
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						get(b)
					}
				})
			})
		}
	}
}
