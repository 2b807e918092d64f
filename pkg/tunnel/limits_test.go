package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestFailureLimiterBounded: the limiter keeps at most its capacity of buckets, evicting the least
// recently used one.
func TestFailureLimiterBounded(t *testing.T) {
	f := newFailureLimiter(0.001, 2, 3)
	for i := 0; i < 1000; i++ {
		f.fail(fmt.Sprint("10.0.0.1/c", i))
		if n := f.len(); n > 3 {
			t.Fatalf("%d buckets after %d keys, capacity 3", n, i+1)
		}
	}
	f = newFailureLimiter(0.001, 2, 2)
	for i, want := range []bool{true, true, false} {
		if got := f.fail("a"); got != want {
			t.Fatalf("burst 2: failure %d within budget = %v, want %v", i+1, got, want)
		}
	}
	f.fail("b")
	f.fail("a") // a is now the most recently used
	f.fail("c") // evicts b
	if f.fail("a") {
		t.Fatal("the recently used bucket a was evicted")
	}
	if !f.fail("b") {
		t.Fatal("b was not evicted (its bucket is still empty)")
	}
}

func TestValidClusterName(t *testing.T) {
	for name, want := range map[string]bool{
		"member1": true, "a": true, "0": true, "a-b": true, strings.Repeat("a", 60): true,
		"": false, strings.Repeat("a", 61): false, "A": false, "-a": false, "a-": false, "a.b": false, "a_b": false, "a b": false, "é": false,
	} {
		if got := validClusterName(name); got != want {
			t.Errorf("validClusterName(%q) = %v", name, got)
		}
	}
	if sanitizeAgentID("0123456789abcdef") != "0123456789abcdef" || sanitizeAgentID(strings.Repeat("a", 33)) != "invalid" || sanitizeAgentID("a\nb") != "invalid" {
		t.Fatal("sanitizeAgentID")
	}
}

// TestProxySlowloris: a client dribbling its request header, or idling on a keep-alive
// connection, is disconnected by the proxy port.
func TestProxySlowloris(t *testing.T) {
	h := newHarness(t, "tcp")
	h.cfg.HandshakeTimeout = 300 * time.Millisecond
	h.tweak = func(pc *ProxyConfig) { pc.IdleTimeout = 300 * time.Millisecond }
	h.start()
	closedByServer := func(c net.Conn) error {
		_ = c.SetReadDeadline(time.Now().Add(waitLimit))
		_, err := io.Copy(io.Discard, c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return errors.New("the proxy kept the connection open")
		}
		return nil
	}
	t.Run("dribbled header", func(t *testing.T) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			_, _ = io.WriteString(c, "GET "+TunnelPath+" HTTP/1.1\r\nHost: x\r\n")
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := io.WriteString(c, "X"); err != nil {
					return
				}
			}
		}()
		if err := closedByServer(c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err := closedByServer(&bufferedConn{Conn: c, r: br}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("dribbled body", func(t *testing.T) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			_, _ = io.WriteString(c, "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := io.WriteString(c, "X"); err != nil {
					return
				}
			}
		}()
		if err := closedByServer(c); err != nil {
			t.Fatal(err)
		}
	})
}

// TestStreamCaps: the caps of open streams per session (proxy and agent side) and per cluster
// refuse the surplus with ErrStreamLimit, count it and log it; the session keeps serving.
func TestStreamCaps(t *testing.T) {
	open := func(t *testing.T, p *Proxy) (net.Conn, error) {
		return p.DialStream(context.Background(), testCluster, StreamHeader{Target: TargetKubernetes, Auth: AuthToken})
	}
	get := func(c net.Conn) error {
		if _, err := io.WriteString(c, "GET /api/v1/namespaces/default HTTP/1.1\r\nHost: kubernetes\r\nAuthorization: Bearer "+userToken+"\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	t.Run("per session", func(t *testing.T) {
		h := newHarness(t, "tcp")
		h.cfg.MaxStreamsPerSession = 2
		p := h.start()
		h.startAgent(agentOpts{cfg: testConfig()})
		h.waitAgents(1)
		var held []net.Conn
		for i := 0; i < 2; i++ {
			c, err := open(t, p)
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			held = append(held, c)
		}
		if _, err := open(t, p); !errors.Is(err, ErrStreamLimit) {
			t.Fatalf("third stream: %v, want ErrStreamLimit", err)
		}
		if p.metrics.streamLimited.get("session") != 1 || !strings.Contains(h.logs.all(), "too many open streams") {
			t.Fatal("the refusal is not counted and logged")
		}
		for _, c := range held {
			_ = c.Close()
		}
		waitFor(t, "a stream after the others closed", func() bool {
			c, err := open(t, p)
			if err != nil {
				return false
			}
			defer c.Close()
			return get(c) == nil
		})
	})
	t.Run("per cluster", func(t *testing.T) {
		h := newHarness(t, "tcp")
		h.tweak = func(pc *ProxyConfig) { pc.MaxStreamsPerCluster = 3 }
		p := h.start()
		h.startAgent(agentOpts{})
		h.startAgent(agentOpts{})
		h.waitAgents(2)
		for i := 0; i < 3; i++ {
			c, err := open(t, p)
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			defer c.Close()
		}
		if _, err := open(t, p); !errors.Is(err, ErrStreamLimit) {
			t.Fatalf("fourth stream: %v, want ErrStreamLimit", err)
		}
		if p.metrics.streamLimited.get("cluster") != 1 {
			t.Fatal("the refusal is not counted")
		}
	})
	t.Run("agent side", func(t *testing.T) {
		h := newHarness(t, "tcp")
		p := h.start()
		ac := testConfig()
		ac.MaxStreamsPerSession = 1
		h.startAgent(agentOpts{cfg: ac})
		h.waitAgents(1)
		first, err := open(t, p)
		if err != nil {
			t.Fatal(err)
		}
		if err := get(first); err != nil { // the first stream is served, and stays open
			t.Fatal(err)
		}
		second, err := open(t, p)
		if err != nil {
			t.Fatal(err)
		}
		if err := get(second); !errors.Is(err, ErrStreamLimit) {
			t.Fatalf("second stream: %v, want ErrStreamLimit from the agent", err)
		}
		_ = second.Close()
		if !strings.Contains(h.logs.all(), "too many open streams") {
			t.Fatal("the agent does not log the refusal")
		}
		_ = first.Close()
		waitFor(t, "a stream after the first closed", func() bool {
			c, err := open(t, p)
			if err != nil {
				return false
			}
			defer c.Close()
			return get(c) == nil
		})
	})
}

// TestProxyNotUpClassification: every "proxy not up yet" failure gets the short retry cap, other
// failures the long one.
func TestProxyNotUpClassification(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return fmt.Errorf("dial proxy x: %w", &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: errno}})
	}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"refused", opErr(syscall.ECONNREFUSED), true},
		{"reset", opErr(syscall.ECONNRESET), true},
		{"EOF before the answer", fmt.Errorf("%w: read upgrade response from x: %w", ErrHandshake, io.EOF), true},
		{"unexpected EOF", fmt.Errorf("%w: read upgrade response from x: %w", ErrHandshake, io.ErrUnexpectedEOF), true},
		{"tls reset", fmt.Errorf("tls handshake with proxy x: %w", opErr(syscall.ECONNRESET)), true},
		{"503 starting", fmt.Errorf("%w (%w): proxy x answered 503: starting", ErrProxyUnavailable, ErrHandshake), true},
		{"401", fmt.Errorf("%w by proxy x (401)", ErrUnauthorized), false},
		{"429", fmt.Errorf("%w: proxy x answered 429", ErrRateLimited), false},
		{"pin", ErrCAHashMismatch, false},
		{"timeout", fmt.Errorf("dial proxy x: %w", context.DeadlineExceeded), false},
		{"426", fmt.Errorf("%w: proxy x answered 426 Upgrade Required", ErrHandshake), false},
	} {
		if got := ProxyNotUp(c.err); got != c.want {
			t.Errorf("%s: ProxyNotUp = %v, want %v", c.name, got, c.want)
		}
		b := Backoff{Initial: time.Second, Max: time.Hour, ResetAfter: time.Minute, MaxRefused: time.Millisecond}
		for i := 0; i < 50; i++ {
			if d := b.DurationAfter(20, c.err); c.want && d > time.Millisecond {
				t.Fatalf("%s: wait %s over the short cap", c.name, d)
			}
		}
	}
}

// TestAgentProxyStarting: while the proxy's cache syncs the agent is told "starting" (503) and
// retries with the short cap; the error does not blame an L7 proxy or a standby replica.
func TestAgentProxyStarting(t *testing.T) {
	h := newHarness(t, "tcp")
	p := h.start()
	p.SetStarting(true)
	h.cfg.Backoff.MaxRefused = time.Millisecond
	a := h.startAgent(agentOpts{})
	e := a.nextEvent(t)
	if !errors.Is(e.Err, ErrProxyUnavailable) || !strings.Contains(e.Err.Error(), "starting") ||
		strings.Contains(e.Err.Error(), "L7") || strings.Contains(e.Err.Error(), "standby") {
		t.Fatalf("agent error while the proxy starts: %v", e.Err)
	}
	if e.Wait > time.Millisecond {
		t.Fatalf("retry in %s, want the short cap", e.Wait)
	}
	p.SetStarting(false)
	h.waitAgents(1)
}

// flakyListener returns one temporary Accept error (EMFILE) before delegating.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: &os.SyscallError{Syscall: "accept4", Err: syscall.EMFILE}}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// TestSniffListenerTemporaryError: an EMFILE from Accept does not end the TLS+HTTP listener.
func TestSniffListenerTemporaryError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := NewCA("test")
	rc, _ := NewRenewingCert(ca, "x", []string{"localhost"}, nil, ServingValidity)
	fl := &flakyListener{Listener: ln, fails: 3}
	sl := newSniffListener(fl, rc.ServerTLS(nil), time.Second)
	defer sl.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
	go func() { _ = srv.Serve(sl) }()
	defer srv.Close()
	c := &http.Client{Timeout: waitLimit}
	resp, err := c.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatalf("after temporary Accept errors: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
}

func TestLimitConfigValidate(t *testing.T) {
	for name, f := range map[string]func(*ProxyConfig){
		"streams per session": func(c *ProxyConfig) { c.Config.MaxStreamsPerSession = 0 },
		"window too large":    func(c *ProxyConfig) { c.Config.StreamWindowSize = MaxStreamWindowSize + 1 },
		"streams per cluster": func(c *ProxyConfig) { c.MaxStreamsPerCluster = 0 },
		"header bytes":        func(c *ProxyConfig) { c.MaxHeaderBytes = 10 },
		"failure keys":        func(c *ProxyConfig) { c.FailureKeys = 0 },
		"idle timeout":        func(c *ProxyConfig) { c.IdleTimeout = 0 },
	} {
		pc := DefaultProxyConfig()
		pc.Authenticator, pc.AllowPlaintextAgents = StaticAuthenticator{}, true
		if err := pc.Validate(); err != nil {
			t.Fatalf("defaults: %v", err)
		}
		f(pc)
		if err := pc.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
}
