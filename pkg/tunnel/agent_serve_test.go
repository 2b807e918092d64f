package tunnel

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestAgentServe feeds the agent's stream server (agent_serve.go) what a proxy, an old or a new
// one, or a hostile one, can send on a stream: over net.Pipe, TCP and TLS sessions.
func TestAgentServe(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, h *harness, a *runningAgent)
	}{
		{"ManyRequestsOneStream", caseServeMany},
		{"PipelinedRequests", caseServePipelined},
		{"BodiesKeepAlive", caseServeBodies},
		{"ContentLengthAndChunked", caseServeCLAndTE},
		{"ConflictingContentLengths", caseServeConflictingCL},
		{"BadChunking", caseServeBadChunking},
		{"HeaderTooLarge", caseServeHeaderTooLarge},
		{"RequestLineTooLong", caseServeLineTooLong},
		{"SlowHead", caseServeSlowHead},
		{"Malformed", caseServeMalformed},
		{"ConnectionClose", caseServeConnectionClose},
		{"TokenModeWithoutAuthorization", caseServeTokenMode},
		{"HeadHasNoBody", caseServeHead},
		{"HopByHopHeaders", caseServeHopByHop},
		{"KeepAliveOffClosesIdle", caseServeKeepAliveOff},
		{"IdleWatchGoroutines", caseServeWatchGoroutines},
		{"StreamingResponseCancelled", caseServeStreamingCancelled},
		{"LargeResponseCancelled", caseServeLargeCancelled},
	}
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					h := newHarness(t, kind)
					h.cfg.StreamOpenTimeout = 500 * time.Millisecond
					a := ready(t, h)
					c.run(t, h, a)
				})
			}
		})
	}
}

// rawStream is one stream opened by the proxy, spoken to byte by byte.
type rawStream struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func openRaw(t *testing.T, h *harness, sh StreamHeader) *rawStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	c, err := h.currentProxy().DialStream(ctx, testCluster, sh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(waitLimit))
	return &rawStream{t: t, c: c, br: bufio.NewReader(c)}
}

func certStream(t *testing.T, h *harness) *rawStream {
	return openRaw(t, h, StreamHeader{Target: TargetKubernetes, Auth: AuthCert})
}

func (s *rawStream) send(raw string) {
	s.t.Helper()
	if _, err := io.WriteString(s.c, raw); err != nil {
		s.t.Fatalf("write: %v", err)
	}
}

// read reads one response and its body.
func (s *rawStream) read(method string) (*http.Response, string) {
	s.t.Helper()
	resp, err := http.ReadResponse(s.br, &http.Request{Method: method})
	if err != nil {
		s.t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

// ended asserts the agent ends the stream (no further response).
func (s *rawStream) ended() {
	s.t.Helper()
	b, err := s.br.ReadByte()
	if err == nil {
		rest, _ := s.br.Peek(s.br.Buffered())
		s.t.Fatalf("stream still sends: %q", string(b)+string(rest))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.t.Fatal("stream not closed")
	}
}

const getNS = "GET /api/v1/namespaces/default HTTP/1.1\r\nHost: kubernetes\r\n\r\n"

func wantStatus(t *testing.T, resp *http.Response, body string, code int) {
	t.Helper()
	if resp.StatusCode != code {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, code, body)
	}
}

func caseServeMany(t *testing.T, h *harness, _ *runningAgent) {
	s := certStream(t, h)
	for i := range 200 {
		s.send(getNS)
		resp, body := s.read(http.MethodGet)
		wantStatus(t, resp, body, http.StatusOK)
		if id := resp.Header.Get("X-Identity"); id != "agent" || !strings.Contains(body, "Namespace") {
			t.Fatalf("request %d: identity %q body %q", i, id, body)
		}
	}
}

func caseServePipelined(t *testing.T, h *harness, _ *runningAgent) {
	s := certStream(t, h)
	s.send(strings.Repeat(getNS+"GET /large?n=70000 HTTP/1.1\r\nHost: k\r\n\r\n", 10))
	for i := range 10 {
		resp, body := s.read(http.MethodGet)
		wantStatus(t, resp, body, http.StatusOK)
		resp, body = s.read(http.MethodGet)
		wantStatus(t, resp, body, http.StatusOK)
		if len(body) != 70000 || body[69999] != pattern(69999) {
			t.Fatalf("pipelined %d: large body of %d bytes", i, len(body))
		}
	}
}

func caseServeBodies(t *testing.T, h *harness, _ *runningAgent) {
	s := certStream(t, h)
	s.send("POST /echo HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\nhello")
	if resp, body := s.read(http.MethodPost); body != "hello" {
		t.Fatalf("echo with a length: %d %q", resp.StatusCode, body)
	}
	s.send("POST /echo HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
	if resp, body := s.read(http.MethodPost); body != "abcde" {
		t.Fatalf("chunked echo: %d %q", resp.StatusCode, body)
	}
	// Expect: 100-continue: the agent answers 100 when the upstream reads the body.
	s.send("POST /echo HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
	line, err := s.br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("want 100 Continue, got %q %v", line, err)
	}
	if l, _ := s.br.ReadString('\n'); l != "\r\n" {
		t.Fatalf("100 Continue head: %q", l)
	}
	s.send("xyz")
	if resp, body := s.read(http.MethodPost); body != "xyz" {
		t.Fatalf("echo after 100-continue: %d %q", resp.StatusCode, body)
	}
	// A body arriving in pieces while the request is already upstream.
	s.send("POST /echo HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nping\r\n")
	s.send("4\r\npong\r\n0\r\n\r\n")
	if resp, body := s.read(http.MethodPost); body != "pingpong" {
		t.Fatalf("body in pieces: %d %q", resp.StatusCode, body)
	}
	s.send(getNS)
	if resp, body := s.read(http.MethodGet); resp.StatusCode != http.StatusOK {
		t.Fatalf("after bodies: %d %s", resp.StatusCode, body)
	}
}

func caseServeCLAndTE(t *testing.T, h *harness, _ *runningAgent) {
	// Both framings: chunked wins (RFC 9112 §6.3), the length is dropped, nothing is smuggled
	// into the next request.
	s := certStream(t, h)
	s.send("POST /echo HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	resp, body := s.read(http.MethodPost)
	if resp.StatusCode == http.StatusOK && body != "hello" {
		t.Fatalf("echo: %q", body)
	}
	if resp.StatusCode != http.StatusOK {
		s.ended()
		return
	}
	s.send(getNS)
	if resp, body := s.read(http.MethodGet); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Namespace") {
		t.Fatalf("next request: %d %q", resp.StatusCode, body)
	}
}

func caseServeConflictingCL(t *testing.T, h *harness, _ *runningAgent) {
	s := certStream(t, h)
	s.send("POST /echo HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
	resp, body := s.read(http.MethodPost)
	wantStatus(t, resp, body, http.StatusBadRequest)
	s.ended()
}

func caseServeBadChunking(t *testing.T, h *harness, _ *runningAgent) {
	s := certStream(t, h)
	s.send("POST /echo HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + getNS)
	// At most one (failed) answer, then the stream ends: the rest is never read as a request.
	if resp, err := http.ReadResponse(s.br, nil); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Identity") != "" {
			t.Fatalf("bytes after a bad chunk were served as a request")
		}
	}
	s.ended()
}

func caseServeHeaderTooLarge(t *testing.T, h *harness, _ *runningAgent) {
	wantHeadTooLarge(t, h, "GET /api HTTP/1.1\r\nHost: k\r\nX-Big: "+strings.Repeat("a", agentMaxHeaderBytes+8192)+"\r\n\r\n")
}

func caseServeLineTooLong(t *testing.T, h *harness, _ *runningAgent) {
	wantHeadTooLarge(t, h, "GET /"+strings.Repeat("a", agentMaxHeaderBytes+8192)+" HTTP/1.1\r\nHost: k\r\n\r\n")
}

// wantHeadTooLarge: a request head over the cap gets 431 and the stream ends.
func wantHeadTooLarge(t *testing.T, h *harness, req string) {
	t.Helper()
	s := certStream(t, h)
	go func() { _, _ = io.WriteString(s.c, req) }()
	resp, body := s.read(http.MethodGet)
	wantStatus(t, resp, body, http.StatusRequestHeaderFieldsTooLarge)
	s.ended()
}

func caseServeSlowHead(t *testing.T, h *harness, _ *runningAgent) {
	// A head that never completes: the stream ends after StreamOpenTimeout, unanswered; a request
	// after an idle pause (no timeout while idle) still works.
	s := certStream(t, h)
	s.send(getNS)
	if resp, _ := s.read(http.MethodGet); resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	s.send("GET /api/v1/namespaces/default HTTP/1.1\r\nHost: k\r\n")
	s.ended()
}

func caseServeMalformed(t *testing.T, h *harness, _ *runningAgent) {
	for _, raw := range []string{
		"GARBAGE\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n", // no Host
		"GET / HTTP/2.0\r\nHost: k\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: k\r\nBad Header: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: gzip\r\n\r\n",
		"CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
	} {
		s := certStream(t, h)
		s.send(raw)
		resp, body := s.read(http.MethodGet)
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%q: status %d, want 400: %s", raw, resp.StatusCode, body)
		}
		s.ended()
	}
}

func caseServeConnectionClose(t *testing.T, h *harness, _ *runningAgent) {
	s := certStream(t, h)
	s.send("GET /api/v1/namespaces/default HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")
	resp, body := s.read(http.MethodGet)
	wantStatus(t, resp, body, http.StatusOK)
	if !resp.Close {
		t.Fatalf("answer without Connection: close: %v", resp.Header)
	}
	s.ended()
}

func caseServeTokenMode(t *testing.T, h *harness, _ *runningAgent) {
	s := openRaw(t, h, StreamHeader{Target: TargetKubernetes, Auth: AuthToken})
	s.send(getNS)
	resp, body := s.read(http.MethodGet)
	wantStatus(t, resp, body, http.StatusUnauthorized)
	if !strings.Contains(body, "present a client certificate issued by the proxy CA") || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("401 body %q", body)
	}
	s.send("GET /api/v1/namespaces/default HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer " + userToken + "\r\n\r\n")
	resp, body = s.read(http.MethodGet)
	wantStatus(t, resp, body, http.StatusOK)
	if id := resp.Header.Get("X-Identity"); id != "user" {
		t.Fatalf("identity %q, want user", id)
	}
}

func caseServeHead(t *testing.T, h *harness, _ *runningAgent) {
	s := certStream(t, h)
	s.send("HEAD /large?n=1000 HTTP/1.1\r\nHost: k\r\n\r\n")
	resp, body := s.read(http.MethodHead)
	wantStatus(t, resp, body, http.StatusOK)
	if resp.ContentLength != 1000 || body != "" {
		t.Fatalf("HEAD: length %d body %q", resp.ContentLength, body)
	}
	s.send(getNS)
	if resp, body := s.read(http.MethodGet); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Namespace") {
		t.Fatalf("after HEAD: %d %q", resp.StatusCode, body)
	}
}

func caseServeHopByHop(t *testing.T, h *harness, _ *runningAgent) {
	// /enc reports the Accept-Encoding it saw; hop-by-hop headers and the ones Connection names
	// do not reach the upstream (the 404 of an unknown path proves nothing, so use the echo of
	// /enc's header and /echo's absence of smuggling instead).
	s := certStream(t, h)
	s.send("GET /enc HTTP/1.1\r\nHost: k\r\nConnection: keep-alive, Accept-Encoding\r\nAccept-Encoding: gzip\r\nKeep-Alive: 5\r\n\r\n")
	resp, body := s.read(http.MethodGet)
	wantStatus(t, resp, body, http.StatusOK)
	if seen := resp.Header.Get("X-Seen-Accept-Encoding"); seen != "<none>" {
		t.Fatalf("a header named by Connection reached the upstream: %q", seen)
	}
	s.send("GET /enc HTTP/1.1\r\nHost: k\r\nAccept-Encoding: gzip\r\n\r\n")
	resp, body = s.read(http.MethodGet)
	if seen := resp.Header.Get("X-Seen-Accept-Encoding"); seen != "1:gzip" || resp.Header.Get("Content-Encoding") != "gzip" || body != string(encGzip) {
		t.Fatalf("Accept-Encoding not passed verbatim: %q %q", seen, resp.Header.Get("Content-Encoding"))
	}
}

func caseServeKeepAliveOff(t *testing.T, h *harness, a *runningAgent) {
	idle := certStream(t, h)
	idle.send(getNS)
	idle.read(http.MethodGet)
	busy := certStream(t, h)
	busy.send("GET /watch?watch=true HTTP/1.1\r\nHost: k\r\n\r\n")
	resp, err := http.ReadResponse(busy.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent to serve both streams", func() bool {
		a.a.srv.mu.Lock()
		defer a.a.srv.mu.Unlock()
		return len(a.a.srv.conns) == 2
	})
	a.a.srv.setKeepAlives(false)
	defer a.a.srv.setKeepAlives(true)
	idle.ended()
	// The watch goes on; when it ends, the stream closes.
	h.backend.watchNext <- struct{}{}
	ev := make([]byte, 64)
	if n, err := resp.Body.Read(ev); err != nil || !strings.Contains(string(ev[:n]), "ADDED") {
		t.Fatalf("watch after keep-alive off: %q %v", ev[:n], err)
	}
}

// caseServeWatchGoroutines counts the goroutines an idle watch costs (the agent's two: one
// watching the stream, one copying events; the HTTP/2 client's and the backend handler's, all in
// this process) and checks that closing the streams ends the upstream watches.
func caseServeWatchGoroutines(t *testing.T, h *harness, _ *runningAgent) {
	const n = 40
	warm := certStream(t, h)
	warm.send("GET /watch?watch=true HTTP/1.1\r\nHost: k\r\n\r\n")
	if _, err := http.ReadResponse(warm.br, nil); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	var streams []*rawStream
	for range n {
		s := certStream(t, h)
		s.send("GET /watch?watch=true HTTP/1.1\r\nHost: k\r\n\r\n")
		resp, err := http.ReadResponse(s.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || !strings.Contains(line, "ADDED") {
			t.Fatalf("first event %q %v", line, err)
		}
		streams = append(streams, s)
	}
	after := runtime.NumGoroutine()
	per := float64(after-before) / n
	t.Logf("goroutines per idle watch (agent 2, HTTP/2 client 1, backend 1): %.2f", per)
	if per > 4.5 {
		t.Fatalf("%.2f goroutines per idle watch, want at most 4 (agent 2, HTTP/2 client 1, backend handler 1)", per)
	}
	for _, s := range streams {
		_ = s.c.Close()
	}
	waitFor(t, "the watches to end upstream when their streams close", func() bool {
		return runtime.NumGoroutine() <= before+2
	})
}

// caseServeStreamingCancelled: a response without a length that is not a watch (/watch without
// ?watch=true streams like logs -f) ends upstream when the caller closes its stream.
func caseServeStreamingCancelled(t *testing.T, h *harness, _ *runningAgent) {
	callerLeaves(t, h, "GET /watch HTTP/1.1\r\nHost: k\r\n\r\n", "the streaming response", func(resp *http.Response) {
		if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || !strings.Contains(line, "ADDED") {
			t.Fatalf("first event %q %v", line, err)
		}
	})
}

// caseServeLargeCancelled: a caller that goes away in the middle of a large response (a length,
// more than a stream window) ends the upstream request.
func caseServeLargeCancelled(t *testing.T, h *harness, _ *runningAgent) {
	callerLeaves(t, h, "GET /large?n=50000000 HTTP/1.1\r\nHost: k\r\n\r\n", "the large response", func(resp *http.Response) {
		if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil || resp.ContentLength != 50000000 {
			t.Fatalf("large GET: length %d, %v", resp.ContentLength, err)
		}
	})
}

// callerLeaves sends req on a cert stream, lets started check the response's beginning, closes
// the stream and waits for what served it upstream to end.
func callerLeaves(t *testing.T, h *harness, req, what string, started func(*http.Response)) {
	t.Helper()
	warm := certStream(t, h)
	warm.send(getNS)
	warm.read(http.MethodGet)
	before := runtime.NumGoroutine()
	s := certStream(t, h)
	s.send(req)
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	started(resp)
	_ = s.c.Close()
	waitFor(t, what+" to end upstream when its stream closes", func() bool {
		return runtime.NumGoroutine() <= before+2
	})
}
