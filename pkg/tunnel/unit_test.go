package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	b := DefaultBackoff()
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	for attempt, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		if got := b.ceiling(attempt); got != want {
			t.Fatalf("ceiling(%d) = %v, want %v", attempt, got, want)
		}
	}
	if got := b.ceiling(60); got != b.Max {
		t.Fatalf("ceiling is not capped: %v", got)
	}
	// Full jitter: waits spread over [0, ceiling], never beyond.
	var low, high bool
	for i := 0; i < 2000; i++ {
		d := b.Duration(8)
		if d < 0 || d > b.ceiling(8) {
			t.Fatalf("wait %v outside [0, %v]", d, b.ceiling(8))
		}
		low = low || d < b.ceiling(8)/4
		high = high || d > 3*b.ceiling(8)/4
	}
	if !low || !high {
		t.Fatal("waits are not spread over the whole interval")
	}
	refused := fmt.Errorf("dial proxy: %w", &net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}})
	for i := 0; i < 200; i++ {
		if d := b.DurationAfter(20, refused); d > b.MaxRefused {
			t.Fatalf("refused: wait %v above %v", d, b.MaxRefused)
		}
	}
	var above bool
	for i := 0; i < 200 && !above; i++ {
		above = b.DurationAfter(20, errors.New("tls: handshake failure")) > b.MaxRefused
	}
	if !above {
		t.Fatal("other failures are capped by MaxRefused too")
	}
	if (Backoff{Initial: time.Second, Max: time.Millisecond}).Validate() == nil {
		t.Fatal("max < initial accepted")
	}
}

func TestTokenEqual(t *testing.T) {
	for _, tc := range []struct {
		want, got string
		eq        bool
	}{{"abc", "abc", true}, {"abc", "abd", false}, {"abc", "abcd", false}, {"", "", false}, {"abc", "", false}} {
		if TokenEqual(tc.want, tc.got) != tc.eq {
			t.Errorf("TokenEqual(%q, %q) != %v", tc.want, tc.got, tc.eq)
		}
	}
}

func TestStreamHeader(t *testing.T) {
	rid := strings.Repeat("0a", 16)
	for _, h := range []StreamHeader{{TargetKubernetes, AuthCert, ""}, {TargetKubernetes, AuthToken, ""}, {TargetKubernetesH2, AuthCert, ""},
		{TargetKubernetesH2, AuthToken, rid}, {TargetKubeSphere, AuthNone, ""}, {TargetControl, ControlGoAway, ""}} {
		if err := h.Validate(); err != nil {
			t.Errorf("%+v: %v", h, err)
		}
		got, err := readStreamHeader(bufio.NewReader(bytes.NewReader(h.encode())))
		if err != nil || got != h {
			t.Errorf("%+v read back as %+v, %v", h, got, err)
		}
	}
	for _, h := range []StreamHeader{{TargetKubernetes, AuthNone, ""}, {TargetKubernetesH2, AuthNone, ""}, {TargetKubeSphere, AuthCert, ""},
		{"etcd", AuthNone, ""}, {"10.0.0.1:22", AuthNone, ""}, {"", "", ""},
		// a relay id only on kubernetes-h2, and only 32 lowercase hex digits
		{TargetKubernetes, AuthCert, rid}, {TargetKubernetesH2, AuthCert, strings.ToUpper(rid)}, {TargetKubernetesH2, AuthCert, rid[:31]},
		{TargetKubernetesH2, AuthCert, rid + "0"}, {TargetKubernetesH2, AuthCert, "../" + rid[3:]}} {
		if err := h.Validate(); !errors.Is(err, ErrUnknownTarget) {
			t.Errorf("%+v accepted: %v", h, err)
		}
	}
	for _, line := range []string{"KSMC1 kubernetes-h2 cert " + rid + " x\n", "KSMC1 kubernetes-h2 cert \n", "KSMC1 kubernetes-h2 cert  " + rid + "\n"} {
		if _, err := readStreamHeader(bufio.NewReader(strings.NewReader(line))); err == nil {
			t.Errorf("%q accepted", line)
		}
	}
}

func TestParseCACertHash(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	if got, err := ParseCACertHash(strings.ToUpper(good)); err != nil || got != good {
		t.Fatalf("%q %v", got, err)
	}
	for _, bad := range []string{"", "md5:" + strings.Repeat("ab", 32), "sha256:abc", "sha256:" + strings.Repeat("zz", 32)} {
		if _, err := ParseCACertHash(bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestPinMismatch: an agent pinned to another CA refuses the proxy with a clear x509 error.
func TestPinMismatch(t *testing.T) {
	h := newHarness(t, "tls")
	h.start()
	other, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	a := h.startAgent(agentOpts{pin: other.Hash()})
	e := a.nextEvent(t)
	if e.Connected || !errors.Is(e.Err, ErrCAHashMismatch) {
		t.Fatalf("event %+v, want ErrCAHashMismatch", e)
	}
	msg := e.Err.Error()
	if !strings.Contains(msg, "x509") || !strings.Contains(msg, other.Hash()) || !strings.Contains(msg, h.ca.Hash()) {
		t.Fatalf("unclear error: %s", msg)
	}
	if e2 := a.nextEvent(t); e2.Connected || e2.Attempt < 2 {
		t.Fatalf("not retried: %+v", e2)
	}
}

// TestProxyPort: /health (with a query string too), /version, 404 elsewhere (/metrics too), over both
// TLS and plain HTTP on the one port; plaintext agents refused when TLS is on and they are not
// allowed.
func TestProxyPort(t *testing.T) {
	h := newHarness(t, "tls")
	p := h.start()
	h.listen()
	h.startAgent(agentOpts{})
	h.waitAgents(1)
	tlsc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.ca.Pool(), ServerName: "localhost"}}}
	for _, base := range []string{"https://" + h.addr, "http://" + h.addr} {
		for _, tc := range []struct {
			path, body string
			code       int
		}{
			{"/health", "OK\n", 200}, {"/health?probe=1", "OK\n", 200}, {"/version", "test\n", 200},
			// Metrics name every connected cluster: never on the proxy port (no name oracle).
			{"/metrics", "", 404}, {"/nope", "", 404},
		} {
			resp, err := tlsc.Get(base + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.body) || (tc.path == "/health" && string(b) != "OK\n") {
				t.Fatalf("%s%s: %d %q", base, tc.path, resp.StatusCode, b)
			}
		}
	}
	// The metrics are on their own handler (the proxy command serves it on --metrics-bind-address).
	rec := httptest.NewRecorder()
	p.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `ksmc_proxy_agents{cluster="member1"} 1`) {
		t.Fatalf("metrics: %q", rec.Body.String())
	}
	// The upgrade endpoint refuses plaintext when TLS is configured.
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET "+TunnelPath+" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "+UpgradeProtocol+"\r\n"+
		ClusterHeader+": member1\r\nAuthorization: Bearer "+testToken+"\r\n\r\n")
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 403") {
		t.Fatalf("plaintext agent: %q", buf[:n])
	}
	_ = p
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.StreamWindowSize = 1024
	if !errors.Is(c.Validate(), ErrInvalidConfig) {
		t.Fatal("tiny window accepted")
	}
	ac := DefaultAgentConfig()
	ac.ProxyURL, ac.ClusterName = "http://proxy:8080", "m"
	ac.Token = func() (string, error) { return "t", nil }
	if err := ac.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("agent without kube config: %v", err)
	}
	ac.CACertHash = "sha256:" + strings.Repeat("00", 32)
	if err := ac.Validate(); err == nil || !strings.Contains(err.Error(), "https") && !strings.Contains(err.Error(), "kube") {
		t.Fatalf("pin with http: %v", err)
	}
	pc := DefaultProxyConfig()
	pc.Authenticator = StaticAuthenticator{}
	if !errors.Is(pc.Validate(), ErrInvalidConfig) {
		t.Fatal("proxy without TLS and without AllowPlaintextAgents accepted")
	}
	_ = context.Background
}

// TestRenewingCert: a serving certificate is reissued once less than a third of its life is left.
func TestRenewingCert(t *testing.T) {
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := NewRenewingCert(ca, "x", []string{"x"}, nil, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := rc.Get()
	if again, _ := rc.Get(); again != first {
		t.Fatal("renewed while fresh")
	}
	waitFor(t, "renewal", func() bool {
		c, err := rc.Get()
		return err == nil && c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0
	})
	c, _ := rc.Get()
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "x"}); err != nil {
		t.Fatal(err)
	}
}

// frameRecorder records what is written to it, one entry per Write.
type frameRecorder struct {
	net.Conn
	writes [][]byte
}

func (c *frameRecorder) Write(p []byte) (int, error) {
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

// TestCoalescingConnOneWritePerFrame: a data frame's header and body leave in one write, intact
// and in order (the caller reuses its buffers at once); other frames pass unchanged.
func TestCoalescingConnOneWritePerFrame(t *testing.T) {
	rc := &frameRecorder{}
	c := &coalescingConn{Conn: rc}
	var want [][]byte
	frame := make([]byte, 0, 64<<10)
	for i := 0; i < 500; i++ {
		size := 1 + (i*7919)%(40<<10)
		hdr := []byte{0, 0, 0, 0, 0, 0, 0, byte(i), byte(size >> 24), byte(size >> 16), byte(size >> 8), byte(size)}
		if i%5 == 0 {
			hdr[1] = 1 // a window update: no body follows
			if _, err := c.Write(hdr); err != nil {
				t.Fatal(err)
			}
			want = append(want, append([]byte(nil), hdr...))
			continue
		}
		frame = frame[:0]
		for j := 0; j < size; j++ {
			frame = append(frame, byte(i+j))
		}
		if n, err := c.Write(hdr); err != nil || n != 12 {
			t.Fatal(n, err)
		}
		if n, err := c.Write(frame); err != nil || n != size {
			t.Fatal(n, err)
		}
		want = append(want, append(append([]byte(nil), hdr...), frame...))
		for j := range frame {
			frame[j] = 0xee
		}
	}
	if len(rc.writes) != len(want) {
		t.Fatalf("%d writes for %d frames", len(rc.writes), len(want))
	}
	for i := range want {
		if !bytes.Equal(rc.writes[i], want[i]) {
			t.Fatalf("write %d differs from frame %d", i, i)
		}
	}
}
