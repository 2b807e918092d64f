package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzAgentRequest feeds arbitrary bytes to the agent's request reader (readAgentRequest, under a
// small header cap) and, for what it accepts, to the upstream rewrite (outboundRequest), as a
// hostile or broken proxy could send them on a stream. Invariants: a refusal is 400, or 431 only
// when the cap was hit; an accepted request leaves for the target's host only, without
// hop-by-hop headers (but an upgrade's Connection/Upgrade and TE: trailers), and written out
// as the upstream transport writes it, it reads back as exactly one request with the same
// method, path and body. Seeds: testdata/fuzz/FuzzAgentRequest.
func FuzzAgentRequest(f *testing.F) {
	for _, s := range []string{
		"GET /api HTTP/1.1\r\nHost: kubernetes\r\n\r\n",
		"POST /api/v1/namespaces HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: k\r\nConnection: Upgrade, X-Secret\r\nUpgrade: SPDY/3.1\r\nX-Secret: 1\r\nTe: trailers, deflate\r\n\r\n",
		"GET http://evil.example/x?a=1;b=2 HTTP/1.1\r\nHost: evil\r\nProxy-Authorization: Basic x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"PUT /y HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"GET /" + strings.Repeat("a", 600) + " HTTP/1.1\r\nHost: k\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	target := &url.URL{Scheme: "https", Host: "10.96.0.1:443"}
	const cap = 512
	f.Fuzz(func(t *testing.T, in []byte) {
		lr := &io.LimitedReader{R: bytes.NewReader(in), N: cap + 4096}
		br := bufio.NewReaderSize(lr, 4096)
		req, err := readAgentRequest(br, lr)
		if err != nil {
			var he *headError
			if errors.As(err, &he) {
				if he.code != http.StatusBadRequest && he.code != http.StatusRequestHeaderFieldsTooLarge {
					t.Fatalf("answer %d", he.code)
				}
				if he.code == http.StatusRequestHeaderFieldsTooLarge && lr.N > 0 {
					t.Fatalf("431 below the cap")
				}
			}
			return
		}
		lr.N = 1 << 40
		upType := ""
		if isUpgrade(req) {
			upType = req.Header.Get("Upgrade")
		}
		method, path := req.Method, req.URL.Path
		connNamed := []string{}
		for _, v := range req.Header["Connection"] {
			for f := range strings.SplitSeq(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					connNamed = append(connNamed, http.CanonicalHeaderKey(f))
				}
			}
		}
		if !outboundRequest(req, target, upType) {
			return
		}
		if req.URL.Host != target.Host || req.URL.Scheme != target.Scheme || req.Host != "" || req.RequestURI != "" {
			t.Fatalf("leaves for %s://%s (Host %q)", req.URL.Scheme, req.URL.Host, req.Host)
		}
		for _, k := range append(connNamed, hopHeaders...) {
			if _, ok := req.Header[k]; !ok {
				continue
			}
			switch {
			case upType != "" && (k == "Connection" || k == "Upgrade"):
			case k == "Te" && req.Header.Get("Te") == "trailers":
			default:
				t.Fatalf("hop-by-hop header %q reaches the upstream: %q", k, req.Header[k])
			}
		}
		body, berr := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		if berr != nil {
			return // a broken body: the stream closes after the request
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		var out bytes.Buffer
		if err := req.Write(&out); err != nil {
			return // the transport refuses it too (an invalid method or header value)
		}
		back := bufio.NewReader(&out)
		again, err := http.ReadRequest(back)
		if err != nil {
			t.Fatalf("the outbound request does not read back: %v\n%q", err, out.String())
		}
		got, err := io.ReadAll(again.Body)
		if err != nil || !bytes.Equal(got, body) || again.Method != method || again.URL.Path != path && path != "" {
			t.Fatalf("read back as %s %q body %q (%v), want %s %q body %q", again.Method, again.URL.Path, got, err, method, path, body)
		}
		if back.Buffered() > 0 {
			t.Fatalf("the outbound request carries a second one: %q", out.String())
		}
	})
}
