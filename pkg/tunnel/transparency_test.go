package tunnel

import (
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// encPlain is the fixed body of the /enc backend handler (compressible, larger than one yamux
// window update and one copy buffer); encGzip is its gzip encoding.
var encPlain, encGzip = func() ([]byte, []byte) {
	var p bytes.Buffer
	for i := 0; p.Len() < 300<<10; i++ {
		fmt.Fprintf(&p, `{"kind":"ConfigMap","metadata":{"name":"cm-%d","resourceVersion":"%d"},"data":{"k":"%x"}},`, i, i*31, i*i)
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	_, _ = zw.Write(p.Bytes())
	_ = zw.Close()
	return p.Bytes(), z.Bytes()
}()

// encodingHandler records the Accept-Encoding it received (X-Seen-Accept-Encoding, "<none>"
// when absent) and answers the fixed body, gzip-encoded when the request accepts gzip, identity
// otherwise; with ?chunked=1 (or a watch) without Content-Length, in flushed parts.
func encodingHandler(w http.ResponseWriter, r *http.Request) {
	seen := "<none>"
	if v, ok := r.Header["Accept-Encoding"]; ok {
		seen = fmt.Sprintf("%d:%s", len(v), strings.Join(v, "|"))
	}
	w.Header().Set("X-Seen-Accept-Encoding", seen)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Vary", "Accept-Encoding")
	body := encPlain
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Encoding", "gzip")
		body = encGzip
	}
	q := r.URL.Query()
	if q.Get("chunked") != "1" && q.Get("watch") != "true" {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = w.Write(body)
		return
	}
	f := w.(http.Flusher)
	for len(body) > 0 {
		n := min(len(body), 40<<10)
		_, _ = w.Write(body[:n])
		f.Flush()
		body = body[n:]
	}
}

type rawResp struct {
	proto   int
	code    int
	length  int64
	headers map[string]string
	body    []byte
}

// rawGet sends one GET with exactly the given Accept-Encoding ("" = none) and returns what came
// off the wire: the client never asks for or decodes gzip itself.
func rawGet(t *testing.T, c *http.Client, url, ae, bearer string) rawResp {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if ae != "" {
		req.Header.Set("Accept-Encoding", ae)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	if resp.Uncompressed {
		t.Fatalf("GET %s: the client decompressed: the test must see raw bytes", url)
	}
	r := rawResp{proto: resp.ProtoMajor, code: resp.StatusCode, length: resp.ContentLength, headers: map[string]string{}, body: b}
	for _, k := range []string{"Content-Encoding", "Content-Length", "Content-Type", "Vary", "X-Seen-Accept-Encoding", "Transfer-Encoding"} {
		r.headers[k] = strings.Join(resp.Header.Values(k), "|")
	}
	return r
}

func rawClient(cfg *tls.Config, h2 bool) *http.Client {
	var c *tls.Config
	if cfg != nil {
		c = cfg.Clone()
		c.NextProtos = []string{"http/1.1"}
		if h2 {
			c.NextProtos = []string{"h2", "http/1.1"}
		}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: c, ForceAttemptHTTP2: h2, DisableCompression: true, MaxIdleConnsPerHost: 64}}
}

// TestTunnelTransparentEncoding: a response through the tunnel is byte for byte the one a
// direct request gets, and the upstream sees exactly the client's Accept-Encoding (none stays
// none: the agent must not ask for gzip and decode it again), for HTTP/1.1 and HTTP/2 clients,
// both credential modes, both targets, bodies with and without Content-Length, watches (HTTP/2
// upstream).
func TestTunnelTransparentEncoding(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			h := newHarness(t, kind)
			ready(t, h)
			pool := x509.NewCertPool()
			pool.AddCert(h.backend.kube.Certificate())
			direct := &tls.Config{RootCAs: pool}
			for _, ae := range []string{"", "gzip", "gzip, deflate, br", "identity"} {
				for _, query := range []string{"", "?chunked=1", "?watch=true"} {
					for _, h2 := range []bool{false, true} {
						for _, mode := range []string{"cert", "token"} {
							name := fmt.Sprintf("kube/ae=%q/h2=%v/%s%s", ae, h2, mode, query)
							admin, bearer := mode == "cert", ""
							if !admin {
								bearer = userToken
							}
							want := rawGet(t, rawClient(direct, h2), h.backend.kube.URL+"/enc"+query, ae, bearer)
							got := rawGet(t, rawClient(h.adminTLSOrAnon(admin), h2), h.kubeURL("/enc"+query), ae, bearer)
							compareRaw(t, name, ae, h2, got, want)
						}
					}
				}
				for _, query := range []string{"", "?chunked=1"} {
					name := fmt.Sprintf("ks/ae=%q%s", ae, query)
					want := rawGet(t, rawClient(nil, false), h.backend.ks.URL+"/enc"+query, ae, "")
					got := rawGet(t, rawClient(nil, false), "http://"+h.cl.KubeSphereAddr().String()+"/enc"+query, ae, "")
					compareRaw(t, name, ae, false, got, want)
				}
			}
		})
	}
}

func (h *harness) adminTLSOrAnon(admin bool) *tls.Config {
	h.mu.Lock()
	defer h.mu.Unlock()
	if admin {
		return h.adminTLS
	}
	return h.anonTLS
}

func compareRaw(t *testing.T, name, ae string, h2 bool, got, want rawResp) {
	t.Helper()
	wantSeen := "<none>"
	if ae != "" {
		wantSeen = "1:" + ae
	}
	if want.headers["X-Seen-Accept-Encoding"] != wantSeen {
		t.Fatalf("%s: the direct request itself was altered: backend saw %q", name, want.headers["X-Seen-Accept-Encoding"])
	}
	if got.headers["X-Seen-Accept-Encoding"] != wantSeen {
		t.Errorf("%s: backend saw Accept-Encoding %q through the tunnel, the client sent %q", name, got.headers["X-Seen-Accept-Encoding"], wantSeen)
	}
	if wantProto := map[bool]int{false: 1, true: 2}[h2]; got.proto != wantProto || want.proto != wantProto {
		t.Fatalf("%s: protocols tunnel HTTP/%d, direct HTTP/%d, want HTTP/%d", name, got.proto, want.proto, wantProto)
	}
	if got.code != want.code || got.code != http.StatusOK {
		t.Errorf("%s: status %d, direct %d", name, got.code, want.code)
	}
	if got.length != want.length {
		t.Errorf("%s: Content-Length %d, direct %d", name, got.length, want.length)
	}
	for k, v := range want.headers {
		if got.headers[k] != v {
			t.Errorf("%s: header %s %q, direct %q", name, k, got.headers[k], v)
		}
	}
	if !bytes.Equal(got.body, want.body) {
		t.Errorf("%s: body differs from the direct one (%d vs %d bytes)", name, len(got.body), len(want.body))
	}
}
