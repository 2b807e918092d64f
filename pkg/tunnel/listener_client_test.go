package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/hashicorp/yamux"
)

// captureDialer hands out one end of a pipe per stream; the other end reads HTTP/1.1 requests
// (recording their raw bytes) and answers each with an empty 200.
type captureDialer struct {
	got chan capturedRequest
}

type capturedRequest struct {
	head string // request line and header, as sent
	body []byte // decoded body
	err  error
}

type teeRecorder struct {
	r   io.Reader
	buf bytes.Buffer
}

func (t *teeRecorder) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.buf.Write(p[:n])
	return n, err
}

func (d *captureDialer) DialStream(ctx context.Context, _ string, h StreamHeader) (net.Conn, error) {
	if h.Target == TargetKubernetesH2 {
		return nil, ErrNoRelay // an agent that serves requests only
	}
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		tee := &teeRecorder{r: b}
		br := bufio.NewReader(tee)
		for {
			tee.buf.Reset()
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			raw := tee.buf.String()
			i := strings.Index(raw, "\r\n\r\n")
			body, err := io.ReadAll(req.Body)
			d.got <- capturedRequest{head: raw[:i+4], body: body, err: err}
			if _, err := io.WriteString(b, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
				return
			}
		}
	}()
	return a, nil
}

// TestListenerRequestMatchesReverseProxy: the agent gets byte for byte the request line and
// header that the ReverseProxy and http.Transport of the old path sent (no User-Agent invented,
// Accept-Encoding untouched, no X-Forwarded-For, hop-by-hop headers dropped), and the same body.
func TestListenerRequestMatchesReverseProxy(t *testing.T) {
	d := &captureDialer{got: make(chan capturedRequest, 1)}
	l := &ClusterListener{cfg: ClusterListenerConfig{Cluster: testCluster, Dialer: d, Logger: logr.Discard()}}
	h := StreamHeader{Target: TargetKubernetes, Auth: AuthToken}
	rp := l.reverseProxy(h)
	fwd := newKubeForwarder(l, h)
	defer fwd.pool.close()
	defer rp.Transport.(*http.Transport).CloseIdleConnections()
	big := strings.Repeat("x", 40000)
	cases := []struct {
		name, method, target, body string
		hdr                        map[string][]string
		chunked, noHost            bool
	}{
		{name: "get", method: "GET", target: "/api/v1/namespaces/default", hdr: map[string][]string{
			"Authorization": {"Bearer abc"}, "Accept": {"application/json", "*/*"}, "User-Agent": {"kubectl/v1.34"},
			"Accept-Encoding": {"gzip"}, "X-Forwarded-For": {"1.2.3.4"}, "Forwarded": {"for=1.2.3.4"},
			"X-Forwarded-Host": {"h"}, "X-Forwarded-Proto": {"https"}, "Connection": {"keep-alive, X-Hop"},
			"X-Hop": {"1"}, "Keep-Alive": {"timeout=5"}, "Te": {"trailers, deflate"}, "Proxy-Authorization": {"Basic x"},
			"Proxy-Connection": {"keep-alive"}, "Upgrade": {"h2c"}, "Impersonate-User": {"alice"}, "X-Space": {"  padded \t"},
		}},
		{name: "no user agent", method: "GET", target: "/api/v1/pods?limit=500&continue=abc", hdr: map[string][]string{"Accept": {"application/json"}}},
		{name: "empty user agent", method: "GET", target: "/api", hdr: map[string][]string{"User-Agent": {""}}},
		{name: "watch", method: "GET", target: "/api/v1/pods?watch=true&resourceVersion=10&allowWatchBookmarks=true"},
		{name: "bad query", method: "GET", target: "/api/v1/pods?a=1;b=2&c=%zz"},
		{name: "escaped path", method: "GET", target: "/api/v1/namespaces/a%2Fb/configmaps"},
		{name: "double slash", method: "GET", target: "//api/v1"},
		{name: "force query", method: "GET", target: "/api?"},
		{name: "no host", method: "GET", target: "/version", noHost: true},
		{name: "head", method: "HEAD", target: "/healthz"},
		{name: "delete", method: "DELETE", target: "/api/v1/namespaces/default/pods/p"},
		{name: "options", method: "OPTIONS", target: "/api"},
		{name: "post", method: "POST", target: "/api/v1/namespaces/default/configmaps", body: `{"kind":"ConfigMap"}`,
			hdr: map[string][]string{"Content-Type": {"application/json"}, "Expect": {"100-continue"}}},
		{name: "put large", method: "PUT", target: "/api/v1/namespaces/default/configmaps/c", body: big},
		{name: "patch chunked", method: "PATCH", target: "/api/v1/namespaces/default/configmaps/c", body: big, chunked: true,
			hdr: map[string][]string{"Content-Type": {"application/merge-patch+json"}}},
		{name: "post empty chunked", method: "POST", target: "/x", chunked: true},
	}
	send := func(do func(http.ResponseWriter, *http.Request), c int) capturedRequest {
		tc := cases[c]
		var body io.Reader
		if tc.body != "" || tc.chunked {
			body = strings.NewReader(tc.body)
		}
		r := httptest.NewRequest(tc.method, "http://kubernetes.example:6443"+tc.target, body)
		if tc.chunked {
			r.ContentLength = -1
			r.Body = io.NopCloser(strings.NewReader(tc.body))
		}
		for k, v := range tc.hdr {
			r.Header[k] = v
		}
		if tc.noHost {
			r.Host = ""
		}
		rec := httptest.NewRecorder()
		do(rec, r)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d: %s", tc.name, rec.Code, rec.Body)
		}
		select {
		case got := <-d.got:
			return got
		case <-time.After(waitLimit):
			t.Fatalf("%s: nothing reached the agent", tc.name)
		}
		return capturedRequest{}
	}
	for i, tc := range cases {
		old := send(rp.ServeHTTP, i)
		lean := send(fwd.serve, i)
		if old.head != lean.head {
			t.Errorf("%s: request head differs\nReverseProxy: %q\nlean:         %q", tc.name, old.head, lean.head)
		}
		if !bytes.Equal(old.body, lean.body) || old.err != nil || lean.err != nil {
			t.Errorf("%s: body differs: %d bytes (%v) vs %d bytes (%v)", tc.name, len(old.body), old.err, len(lean.body), lean.err)
		}
	}
}

// scriptedAgent is the agent end of a real yamux session: every stream the listener opens gets
// "OK", then handle speaks (or fails to speak) HTTP/1.1 on it.
type scriptedAgent struct {
	sess   *yamux.Session
	dials  atomic.Int32
	handle func(st net.Conn, br *bufio.Reader)
	mu     sync.Mutex
	open   []net.Conn
}

func newScriptedAgent(t testing.TB, handle func(st net.Conn, br *bufio.Reader)) *scriptedAgent {
	a, b := net.Pipe()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = false
	cs, err := yamux.Client(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := yamux.Server(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedAgent{sess: cs, handle: handle}
	go func() {
		for {
			st, err := ss.AcceptStream()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open = append(s.open, st)
			s.mu.Unlock()
			go func() {
				defer st.Close()
				br := bufio.NewReader(st)
				if _, err := readStreamHeader(br); err != nil {
					return
				}
				if _, err := io.WriteString(st, "OK\n"); err != nil {
					return
				}
				s.handle(st, br)
			}()
		}
	}()
	t.Cleanup(func() { _ = cs.Close(); _ = ss.Close() })
	return s
}

func (s *scriptedAgent) DialStream(_ context.Context, _ string, h StreamHeader) (net.Conn, error) {
	if h.Target == TargetKubernetesH2 {
		return nil, ErrNoRelay // it scripts the request-by-request path
	}
	st, err := s.sess.OpenStream()
	if err != nil {
		return nil, errors.Join(ErrNoAgent, err)
	}
	s.dials.Add(1)
	pw := &prefixWriter{Conn: st, prefix: h.encode()}
	return &proxyStream{Conn: pw, flush: pw.flush}, nil
}

// listenWith starts a kube listener over d and returns it with a client holding a proxy-CA
// client certificate (HTTP/2) and the listener's base URL.
func listenWith(t testing.TB, d StreamDialer) (*ClusterListener, *http.Client, string) {
	t.Helper()
	ca, err := NewCA("ks-mc test CA")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := NewRenewingCert(ca, "kubernetes", []string{"kubernetes"}, []net.IP{net.ParseIP("127.0.0.1")}, ServingValidity)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ListenCluster(ClusterListenerConfig{Cluster: testCluster, BindAddress: "127.0.0.1",
		TLS: rc.ServerTLS(ca.Pool()), Dialer: d, Logger: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	certPEM, keyPEM, err := ca.IssueClusterClient(testCluster, "kubernetes-admin", []string{"system:masters"}, ClientValidity)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair}, ServerName: "kubernetes"},
		ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return cl, &http.Client{Transport: tr}, "https://" + cl.KubeAddr().String()
}

const okResponse = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// serveOK answers every request on the stream with "ok".
func serveOK(st net.Conn, br *bufio.Reader) {
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		if _, err := io.WriteString(st, okResponse); err != nil {
			return
		}
	}
}

func getBody(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestListenerReusesStreams: sequential requests share one stream; the stream returns to the
// pool only after its response ended.
func TestListenerReusesStreams(t *testing.T) {
	a := newScriptedAgent(t, serveOK)
	cl, c, base := listenWith(t, a)
	for i := 0; i < 5; i++ {
		if code, body, err := getBody(c, base+"/api"); err != nil || code != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}
	if n := a.dials.Load(); n != 1 {
		t.Fatalf("5 sequential requests opened %d streams, want 1", n)
	}
	if n := cl.certFwd.pool.len(); n != 1 {
		t.Fatalf("idle streams: %d, want 1", n)
	}
	// Close ends the idle stream (the agent sees it end).
	_ = cl.Close()
	waitFor(t, "idle stream closed", func() bool { return a.sess.NumStreams() == 0 })
}

// TestListenerHostileAgent: what the agent sends is network input.
func TestListenerHostileAgent(t *testing.T) {
	huge := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", maxResponseHeaderBytes+10) + "\r\nContent-Length: 0\r\n\r\n"
	for _, tc := range []struct {
		name     string
		answer   string
		wantCode int  // 0: the client sees an error (the response was cut)
		close    bool // the agent closes the stream after the answer
	}{
		{name: "malformed status line", answer: "HTTP/1.1 2x0 OK\r\n\r\n", wantCode: 502},
		{name: "not http", answer: "SSH-2.0-OpenSSH\r\n\r\n", wantCode: 502},
		{name: "header over the cap", answer: huge, wantCode: 502},
		{name: "lying content-length", answer: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", close: true},
		{name: "chunked garbage", answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n"},
		{name: "switching protocols unasked", answer: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n", wantCode: 502},
		{name: "closed before answering", answer: "", wantCode: 502, close: true},
		{name: "endless 1xx", answer: strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", max1xxResponses+1) + okResponse, wantCode: 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var served atomic.Int32
			a := newScriptedAgent(t, func(st net.Conn, br *bufio.Reader) {
				if served.Add(1) > 1 {
					serveOK(st, br)
					return
				}
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(st, tc.answer)
				if !tc.close {
					_, _ = io.Copy(io.Discard, br) // keep the stream open
				}
			})
			_, c, base := listenWith(t, a)
			code, _, err := getBody(c, base+"/api")
			if tc.wantCode == 0 {
				if err == nil {
					t.Fatalf("got %d and a whole body, want the response cut", code)
				}
			} else if err != nil || code != tc.wantCode {
				t.Fatalf("got %d %v, want %d", code, err, tc.wantCode)
			}
			// The bad stream is never reused: the next request gets a fresh one and its answer.
			if code, body, err := getBody(c, base+"/api"); err != nil || code != 200 || body != "ok" {
				t.Fatalf("next request: %d %q %v", code, body, err)
			}
			if n := a.dials.Load(); n != 2 {
				t.Fatalf("streams opened: %d, want 2", n)
			}
		})
	}
}

// TestListenerIdleStreamChecks: an idle stream the agent closed, or on which it sent bytes
// nobody asked for, is not reused; a GET that finds its reused stream closed under it is retried
// once on a fresh stream, a POST is not.
func TestListenerIdleStreamChecks(t *testing.T) {
	t.Run("closed by the agent", func(t *testing.T) {
		var n atomic.Int32
		a := newScriptedAgent(t, func(st net.Conn, br *bufio.Reader) {
			if n.Add(1) == 1 {
				if _, err := http.ReadRequest(br); err == nil {
					_, _ = io.WriteString(st, okResponse)
				}
				return // close after one response without saying so
			}
			serveOK(st, br)
		})
		_, c, base := listenWith(t, a)
		for i := 0; i < 2; i++ {
			if i == 1 {
				waitFor(t, "agent's close seen", func() bool { return a.sess.NumStreams() <= 1 })
			}
			if code, body, err := getBody(c, base+"/api"); err != nil || code != 200 || body != "ok" {
				t.Fatalf("request %d: %d %q %v", i, code, body, err)
			}
		}
		if d := a.dials.Load(); d != 2 {
			t.Fatalf("streams opened: %d, want 2", d)
		}
	})
	t.Run("unsolicited response", func(t *testing.T) {
		var n atomic.Int32
		a := newScriptedAgent(t, func(st net.Conn, br *bufio.Reader) {
			if n.Add(1) == 1 {
				if _, err := http.ReadRequest(br); err == nil {
					_, _ = io.WriteString(st, okResponse)
					time.Sleep(10 * time.Millisecond) // a separate frame, after the response
					_, _ = io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
				}
				_, _ = io.Copy(io.Discard, br)
				return
			}
			serveOK(st, br)
		})
		_, c, base := listenWith(t, a)
		for i := 0; i < 3; i++ {
			if code, body, err := getBody(c, base+"/api"); err != nil || code != 200 || body != "ok" {
				t.Fatalf("request %d: %d %q %v", i, code, body, err)
			}
			if i == 0 {
				time.Sleep(50 * time.Millisecond) // let the unsolicited bytes arrive (either way, "evil" must never be served)
			}
		}
	})
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run("closed while the request left "+method, func(t *testing.T) {
			var n atomic.Int32
			a := newScriptedAgent(t, func(st net.Conn, br *bufio.Reader) {
				if n.Add(1) == 1 {
					if _, err := http.ReadRequest(br); err == nil {
						_, _ = io.WriteString(st, okResponse)
					}
					// The second request arrives on a stream the agent just gave up.
					_, _ = http.ReadRequest(br)
					return
				}
				serveOK(st, br)
			})
			_, c, base := listenWith(t, a)
			if code, _, err := getBody(c, base+"/api"); err != nil || code != 200 {
				t.Fatalf("first: %d %v", code, err)
			}
			req, _ := http.NewRequest(method, base+"/api", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want, dials := 200, int32(2)
			if method == http.MethodPost {
				want, dials = 502, 1 // not idempotent: the agent may have acted on it
			}
			if resp.StatusCode != want || a.dials.Load() != dials {
				t.Fatalf("%s on a stream closed under it: %d after %d streams, want %d after %d", method, resp.StatusCode, a.dials.Load(), want, dials)
			}
		})
	}
}

// TestListenerClientGoesAway: a client that gives up on a response whose header never comes (or
// on a watch) ends the stream, and the agent sees it end.
func TestListenerClientGoesAway(t *testing.T) {
	ended := make(chan struct{}, 1)
	a := newScriptedAgent(t, func(st net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(st, "HTTP/1.1 200 OK\r\nX-Partial: ") // and never more
		_, _ = io.Copy(io.Discard, br)
		ended <- struct{}{}
	})
	_, c, base := listenWith(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitFor(t, "request at the agent", func() bool { return a.dials.Load() == 1 })
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("a cancelled request succeeded")
	}
	select {
	case <-ended:
	case <-time.After(waitLimit):
		t.Fatal("the agent's stream did not end after the client went away")
	}
}

// TestListenerFullDuplex: a streamed request body (unknown length, sent chunked) and its response
// flow at once: the agent echoes each piece before the client sent the next.
func TestListenerFullDuplex(t *testing.T) {
	a := newScriptedAgent(t, func(st net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.WriteString(st, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
			buf := make([]byte, 64)
			total := 0
			for {
				n, err := req.Body.Read(buf)
				if n > 0 {
					total += n
					fmt.Fprintf(st, "%x\r\n%s\r\n", n, buf[:n])
				}
				if err != nil {
					break
				}
			}
			fmt.Fprintf(st, "0\r\nX-Sum: %d\r\n\r\n", total)
		}
	})
	_, c, base := listenWith(t, a)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, base+"/echo", pr)
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			t.Error(err)
			close(respc)
			return
		}
		respc <- resp
	}()
	_, _ = io.WriteString(pw, "ping1")
	resp := <-respc
	if resp == nil {
		t.FailNow()
	}
	defer resp.Body.Close()
	buf := make([]byte, 5)
	for i := 1; i <= 3; i++ {
		if i > 1 {
			fmt.Fprintf(pw, "ping%d", i)
		}
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != fmt.Sprintf("ping%d", i) {
			t.Fatalf("piece %d: %q %v", i, buf, err)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("end: %q %v", rest, err)
	}
	if got := resp.Trailer.Get("X-Sum"); got != "15" {
		t.Fatalf("trailer X-Sum %q, want 15", got)
	}
}

// goroutineStacks returns every goroutine's stack.
func goroutineStacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func countStacks(stacks []string, all ...string) int {
	n := 0
next:
	for _, s := range stacks {
		for _, sub := range all {
			if !strings.Contains(s, sub) {
				continue next
			}
		}
		n++
	}
	return n
}

// TestListenerGoroutinesPerWatch: with N idle watches open through the harness (real proxy and
// agent, an HTTP/2 client), the proxy side runs one goroutine per watch (the HTTP/2 handler's
// own): no read loop and write loop per stream (the old http.Transport ran both).
func TestListenerGoroutinesPerWatch(t *testing.T) {
	const n = 20
	h := newHarness(t, "pipe")
	h.noRelay = true // the request-by-request path (relay_h2_test.go counts the relay's)
	ready(t, h)
	tr := &http.Transport{TLSClientConfig: h.adminTLS.Clone(), ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	if resp, _, err := h.get(c, "/api/v1/namespaces/default", ""); err != nil || resp.ProtoMajor != 2 {
		t.Fatalf("warm-up: %v %v", resp, err)
	}
	loops := func(stacks []string) int {
		return countStacks(stacks, "net/http.(*persistConn).readLoop") + countStacks(stacks, "net/http.(*persistConn).writeLoop")
	}
	before := goroutineStacks()
	var bodies []io.Closer
	defer func() {
		for _, b := range bodies {
			b.Close()
		}
	}()
	for i := 0; i < n; i++ {
		resp, err := c.Get(h.kubeURL("/watch?watch=true"))
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	after := goroutineStacks()
	t.Logf("goroutines: %d before, %d with %d watches open (proxy, agent, backend and client together)", len(before), len(after), n)
	if got := loops(after) - loops(before); got != 0 {
		t.Errorf("%d more http.Transport read/write loops with %d watches open, want none", got, n)
	}
	if got := countStacks(after, "tunnel.(*ClusterListener).ServeHTTP"); got != n {
		t.Errorf("%d listener handler goroutines, want %d", got, n)
	}
	if t.Failed() {
		t.Logf("stacks:\n%s", strings.Join(after, "\n\n"))
	}
}

// bytesConn is a stream whose agent sent data and then closed it.
type bytesConn struct {
	r *bytes.Reader
}

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) LocalAddr() net.Addr              { return tunnelAddr{} }
func (c *bytesConn) RemoteAddr() net.Addr             { return tunnelAddr{} }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzListenerResponse feeds the listener's response reading whatever an agent could send on a
// stream: it must answer the client (a response or an error), never panic, never pass on a
// hop-by-hop header, and keep a stream only after a whole response.
func FuzzListenerResponse(f *testing.F) {
	for _, s := range []string{
		okResponse,
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil the end",
		"HTTP/1.1 000 Zero\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		l := &ClusterListener{cfg: ClusterListenerConfig{Cluster: testCluster, Logger: logr.Discard()}}
		fwd := newKubeForwarder(l, StreamHeader{Target: TargetKubernetes, Auth: AuthCert})
		defer fwd.pool.close()
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		r := httptest.NewRequest(method, "http://kubernetes/api", nil)
		rec := httptest.NewRecorder()
		c := &bytesConn{r: bytes.NewReader(data)}
		reqHead := append(make([]byte, 0, 64), "GET /api HTTP/1.1\r\nHost: kubernetes\r\n\r\n"...)
		hb := &reqHead
		if fwd.exchange(rec, r, c, false, &hb, bodyNone) {
			t.Fatal("a fresh stream was retried")
		}
		if rec.Code < 100 || rec.Code > 999 {
			t.Fatalf("status %d", rec.Code)
		}
		for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te"} {
			if _, ok := rec.Header()[k]; ok {
				t.Fatalf("hop-by-hop header %s passed on", k)
			}
		}
		if fwd.pool.len() > 0 {
			// Kept for reuse: a whole response was read, so it parses on its own.
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(data)), r)
			if err != nil {
				t.Fatalf("kept a stream after an unreadable response: %v", err)
			}
			if _, err := io.Copy(io.Discard, resp.Body); err != nil && resp.StatusCode >= 200 {
				t.Fatalf("kept a stream after a cut body: %v", err)
			}
		}
	})
}

// TestListenerWatchHeaderAtOnce: a watch answers its header before any event (kube-apiserver
// flushes it at once): the client must get the header while the body is still empty.
func TestListenerWatchHeaderAtOnce(t *testing.T) {
	release := make(chan struct{})
	a := newScriptedAgent(t, func(st net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
		<-release
		_, _ = io.WriteString(st, "6\r\n{\"a\":1\r\n")
		time.Sleep(10 * time.Millisecond)
		_, _ = io.WriteString(st, "0\r\n\r\n") // the watch ends; the stream stays
		serveOK(st, br)
	})
	_, c, base := listenWith(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/pods?watch=true", nil)
	resp, err := c.Do(req)
	close(release)
	if err != nil {
		t.Fatalf("watch header did not arrive before its first event: %v", err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != `{"a":1` {
		t.Fatalf("event: %q %v", buf, err)
	}
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("end of the watch: %q %v", rest, err)
	}
	// The stream that carried the watch carries the next request.
	if code, body, err := getBody(c, base+"/api"); err != nil || code != 200 || body != "ok" || a.dials.Load() != 1 {
		t.Fatalf("after the watch: %d %q %v, %d streams", code, body, err, a.dials.Load())
	}
}

func TestListenerIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream": true, "Text/Event-Stream; charset=utf-8": true, " text/event-stream ;x=1": true,
		"text/event-streams": false, "text/plain": false, "application/json": false, "": false,
	} {
		if got := isEventStream(http.Header{"Content-Type": {ct}}); got != want {
			t.Errorf("%q: %v, want %v", ct, got, want)
		}
	}
}

// TestListenerStreamIdleAlive: the reuse check on the two kinds of streams DialStream hands out:
// yamux streams (ks-mc agents) and pipes (Tower sessions, served by the proxy's own server).
func TestListenerStreamIdleAlive(t *testing.T) {
	pair := map[string]func() (net.Conn, net.Conn){
		"pipe": func() (net.Conn, net.Conn) { return net.Pipe() },
		"yamux": func() (net.Conn, net.Conn) {
			a, b := net.Pipe()
			cfg := yamux.DefaultConfig()
			cfg.LogOutput = io.Discard
			cs, _ := yamux.Client(a, cfg)
			ss, _ := yamux.Server(b, cfg)
			t.Cleanup(func() { cs.Close(); ss.Close() })
			st, err := cs.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			peer, err := ss.AcceptStream()
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1)
			if _, err := io.ReadFull(peer, buf); err != nil {
				t.Fatal(err)
			}
			return st, peer
		},
	}
	for name, mk := range pair {
		t.Run(name, func(t *testing.T) {
			c, peer := mk()
			for i := 0; i < 3; i++ {
				if !streamIdleAlive(c) {
					t.Fatalf("check %d: an open idle stream looks dead", i)
				}
			}
			// The check leaves no deadline behind: a later read waits for data.
			go func() { _, _ = peer.Write([]byte("y")) }()
			buf := make([]byte, 1)
			if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'y' {
				t.Fatalf("read after the checks: %q %v", buf, err)
			}
			_ = peer.Close()
			waitFor(t, "close seen", func() bool { return !streamIdleAlive(c) })
		})
	}
	t.Run("yamux unsolicited bytes", func(t *testing.T) {
		c, peer := pair["yamux"]()
		if _, err := peer.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "bytes seen", func() bool { return !streamIdleAlive(c) })
	})
}

// TestListenerStopAcceptingClosesIdleStreams: a draining listener keeps serving its established
// client connections, closes its idle streams and keeps none afterwards.
func TestListenerStopAcceptingClosesIdleStreams(t *testing.T) {
	a := newScriptedAgent(t, serveOK)
	cl, c, base := listenWith(t, a)
	if code, _, err := getBody(c, base+"/api"); err != nil || code != 200 {
		t.Fatalf("%d %v", code, err)
	}
	if n := cl.certFwd.pool.len(); n != 1 {
		t.Fatalf("idle streams: %d, want 1", n)
	}
	cl.StopAccepting()
	waitFor(t, "idle stream closed", func() bool { return a.sess.NumStreams() == 0 })
	if code, body, err := getBody(c, base+"/api"); err != nil || code != 200 || body != "ok" {
		t.Fatalf("request on an established connection while draining: %d %q %v", code, body, err)
	}
	waitFor(t, "stream closed after its response", func() bool { return a.sess.NumStreams() == 0 })
	if n := cl.certFwd.pool.len(); n != 0 {
		t.Fatalf("idle streams while draining: %d, want 0", n)
	}
}

// TestListenerReuseOverHarness: over every transport of the harness, sequential requests of one
// auth mode share one stream, the two modes never share one, and a POST's body arrives whole.
func TestListenerReuseOverHarness(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			h := newHarness(t, kind)
			ready(t, h)
			p := h.currentProxy()
			admin, anon := h.client(true), h.client(false)
			before := p.metrics.streamsTotal.Load()
			for i := 0; i < 5; i++ {
				if resp, _, err := h.get(admin, "/api/v1/namespaces/default", ""); err != nil || resp.Header.Get("X-Identity") != "agent" {
					t.Fatalf("cert request %d: %v %v", i, resp, err)
				}
				if resp, _, err := h.get(anon, "/api/v1/namespaces/default", userToken); err != nil || resp.Header.Get("X-Identity") != "user" {
					t.Fatalf("token request %d: %v %v", i, resp, err)
				}
			}
			if n := p.metrics.streamsTotal.Load() - before; n != 2 {
				t.Fatalf("10 sequential requests in two auth modes opened %d streams, want 2", n)
			}
			body := strings.Repeat("0123456789", 5000) // streamed, not inline
			resp, err := admin.Post(h.kubeURL("/echo"), "text/plain", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(got) != body {
				t.Fatalf("echo: %d bytes, %v", len(got), err)
			}
		})
	}
}

// TestListenerAgentDrainReleasesIdleStreams: a draining agent closes its idle streams and waits
// for them to end; the listener's sweep closes its side, so the agent exits without waiting out
// its drain timeout.
func TestListenerAgentDrainReleasesIdleStreams(t *testing.T) {
	h := newHarness(t, "tcp")
	h.cfg.DrainTimeout = time.Hour // the agent exits only once its streams ended
	a := ready(t, h)
	if resp, _, err := h.get(h.client(true), "/api/v1/namespaces/default", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	if n := h.cl.certFwd.pool.len(); n != 1 {
		t.Fatalf("idle streams: %d, want 1", n)
	}
	a.cancel() // SIGTERM
	select {
	case <-a.done:
	case <-time.After(waitLimit):
		t.Fatal("the agent did not exit: its idle stream was never closed on the proxy's side")
	}
	waitFor(t, "pool empty", func() bool { return h.cl.certFwd.pool.len() == 0 })
}
