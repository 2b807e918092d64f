package tunnel

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
)

// Wire constants; pkg/tunnel/spec.md describes them in prose.
const (
	// TunnelPath is the proxy's agent upgrade endpoint.
	TunnelPath = "/ksmc/v1/tunnel"
	// UpgradeProtocol is the value of the Upgrade header in both directions.
	UpgradeProtocol = "ksmc-tunnel.v1"
	// ClusterHeader names the cluster the agent serves.
	ClusterHeader = "X-Ksmc-Cluster"
	// AgentIDHeader is a random id per agent process (logs and metrics only).
	AgentIDHeader = "X-Ksmc-Agent-Id"
	// FeaturesHeader lists, comma-separated, what the agent serves beyond version 1's targets;
	// a proxy ignores names it does not know, and an older proxy the header.
	FeaturesHeader = "X-Ksmc-Features"
	// FeatureKubeH2: the agent serves TargetKubernetesH2.
	FeatureKubeH2 = "kubernetes-h2"

	// TargetKubernetes is the member's kube-apiserver.
	TargetKubernetes = "kubernetes"
	// TargetKubernetesH2 is the member's kube-apiserver, reached by relaying a client's whole
	// HTTP/2 connection (relay_h2.go); only agents that offer FeatureKubeH2 are sent it.
	TargetKubernetesH2 = "kubernetes-h2"
	// TargetKubeSphere is the member's ks-apiserver.
	TargetKubeSphere = "kubesphere"

	// TargetControl carries a notice from the proxy, not a connection: "control goaway" tells the
	// agent the proxy is draining. The agent dials nothing for it.
	TargetControl = "control"
	// ControlGoAway is the only control notice.
	ControlGoAway = "goaway"

	// AuthCert: the proxy verified a client certificate issued by its CA; the agent adds its own
	// credentials when the request carries no Authorization header.
	AuthCert = "cert"
	// AuthToken: the client presented no certificate; every request must carry its own
	// Authorization header, which is passed through unchanged.
	AuthToken = "token"
	// AuthNone: passed through as is (ks-apiserver authenticates the user's JWT itself).
	AuthNone = "none"

	streamMagic   = "KSMC1"
	maxHeaderLine = 128
)

// StreamHeader is the first line the proxy writes on every stream it opens.
type StreamHeader struct {
	Target string
	Auth   string
}

// Validate accepts only the pairs the agent serves: kubernetes with cert|token, kubesphere with none.
func (h StreamHeader) Validate() error {
	switch {
	case (h.Target == TargetKubernetes || h.Target == TargetKubernetesH2) && (h.Auth == AuthCert || h.Auth == AuthToken):
		return nil
	case h.Target == TargetKubeSphere && h.Auth == AuthNone:
		return nil
	case h.Target == TargetControl && h.Auth == ControlGoAway:
		return nil
	}
	return fmt.Errorf("%w: target %q auth %q", ErrUnknownTarget, h.Target, h.Auth)
}

func (h StreamHeader) encode() []byte {
	return []byte(streamMagic + " " + h.Target + " " + h.Auth + "\n")
}

// readLine reads one '\n'-terminated line of at most maxHeaderLine bytes.
func readLine(r *bufio.Reader) (string, error) {
	var line []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if b == '\n' {
			return string(line), nil
		}
		line = append(line, b)
		if len(line) > maxHeaderLine {
			return "", fmt.Errorf("%w: line longer than %d bytes", ErrBadStreamHeader, maxHeaderLine)
		}
	}
}

// readStreamHeader parses "KSMC1 <target> <auth>". Syntax errors wrap ErrBadStreamHeader; an
// unknown target or mode wraps ErrUnknownTarget.
func readStreamHeader(r *bufio.Reader) (StreamHeader, error) {
	line, err := readLine(r)
	if err != nil {
		return StreamHeader{}, err
	}
	f := strings.Split(line, " ")
	if len(f) != 3 || f[0] != streamMagic {
		return StreamHeader{}, fmt.Errorf("%w: %q", ErrBadStreamHeader, line)
	}
	h := StreamHeader{Target: f[1], Auth: f[2]}
	return h, h.Validate()
}

// Stream answers: "OK" or "ERR <reason>".
const answerOK = "OK"

func writeAnswer(w io.Writer, err error) error {
	if err == nil {
		_, werr := io.WriteString(w, answerOK+"\n")
		return werr
	}
	reason := "refused"
	switch {
	case errorsIs(err, ErrUnknownTarget):
		reason = "unknown-target"
	case errorsIs(err, ErrBadStreamHeader):
		reason = "bad-header"
	case errorsIs(err, ErrGoAway):
		reason = "going-away"
	case errorsIs(err, ErrStreamLimit):
		reason = "busy"
	}
	_, werr := io.WriteString(w, "ERR "+reason+"\n")
	return werr
}

func parseAnswer(line string) error {
	if line == answerOK {
		return nil
	}
	switch line {
	case "ERR unknown-target":
		return fmt.Errorf("%w: refused by the agent", ErrUnknownTarget)
	case "ERR bad-header":
		return fmt.Errorf("%w: refused by the agent", ErrBadStreamHeader)
	case "ERR going-away":
		return ErrGoAway
	case "ERR busy":
		return &streamLimitError{scope: "agent session"}
	}
	return fmt.Errorf("%w: unexpected answer %q", ErrBadStreamHeader, line)
}

// bufferedConn reads through r first (bytes already buffered during a handshake), then the conn.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// proxyStream is the proxy's end of a stream. Its answer line is read lazily with the first Read,
// so opening a stream costs no round trip; a refusal surfaces as the error of that Read.
type proxyStream struct {
	net.Conn
	flush func() error // sends a pending header before the first read
	once  sync.Once
	r     *bufio.Reader
	err   error
}

func (s *proxyStream) Read(p []byte) (int, error) {
	s.once.Do(func() {
		if s.flush != nil {
			if err := s.flush(); err != nil {
				s.err = fmt.Errorf("write stream header: %w", err)
				return
			}
		}
		s.r = bufio.NewReaderSize(s.Conn, 64)
		line, err := readLine(s.r)
		if err != nil {
			s.err = fmt.Errorf("read stream answer: %w", err)
			return
		}
		s.err = parseAnswer(line)
	})
	if s.err != nil {
		return 0, s.err
	}
	return s.r.Read(p)
}

// prefixWriter sends prefix together with the first Write (or on flush): a stream header and the
// first payload, or an answer and the first response bytes, then leave in one yamux frame.
type prefixWriter struct {
	net.Conn
	mu     sync.Mutex
	prefix []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.prefix == nil {
		w.mu.Unlock()
		return w.Conn.Write(p)
	}
	buf := append(w.prefix, p...)
	w.prefix = nil
	n, err := w.Conn.Write(buf)
	w.mu.Unlock()
	return max(n-(len(buf)-len(p)), 0), err
}

func (w *prefixWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.prefix == nil {
		return nil
	}
	_, err := w.Conn.Write(w.prefix)
	w.prefix = nil
	return err
}

// Close sends a prefix still pending, so that the peer sees it before the end of the stream.
func (w *prefixWriter) Close() error {
	_ = w.flush()
	return w.Conn.Close()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

// rpBufferPool is the reverse proxies' httputil.BufferPool. A reverse proxy holds its buffer for
// the whole response, a watch for hours: 2 KiB keeps an idle watch cheap (an event is flushed as
// it arrives, so a larger buffer only batches what a large event needs anyway); responses that
// end use bulkBufferPool.
type rpBufferPool struct{}

var rpPool = sync.Pool{New: func() any { b := make([]byte, 2*1024); return &b }}

func (rpBufferPool) Get() []byte  { return *(rpPool.Get().(*[]byte)) }
func (rpBufferPool) Put(b []byte) { rpPool.Put(&b) }

// bulkBufferPool serves the requests that end (GET, LIST, ...): a 4 KiB buffer would cut an 8 MiB
// LIST into 2,048 frames, TLS records and syscalls on each side; 32 KiB cuts it into 256, and the
// buffer goes back to the pool when the response ends.
type bulkBufferPool struct{}

func (bulkBufferPool) Get() []byte  { return *(bufPool.Get().(*[]byte)) }
func (bulkBufferPool) Put(b []byte) { bufPool.Put(&b) }

// longLived reports a request whose response may stay open for hours (a watch, an upgrade): it
// gets the small buffer of rpBufferPool.
func longLived(r *http.Request) bool { return isWatch(r) || isUpgrade(r) }

// withBulkBuffers returns a copy of rp that copies with 32 KiB buffers (bulkBufferPool).
func withBulkBuffers(rp *httputil.ReverseProxy) *httputil.ReverseProxy {
	c := *rp
	c.BufferPool = bulkBufferPool{}
	return &c
}

// splice copies both ways; when either direction ends, both conns are closed.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_ = adaptiveCopy(dst, src)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	_ = a.Close()
	_ = b.Close()
	<-done
}

// adaptiveCopy waits for data with a 2 KiB buffer and switches to a pooled 32 KiB one while a
// burst lasts, so an idle connection (a watch, an exec session) holds 2 KiB, not 32.
func adaptiveCopy(dst io.Writer, src io.Reader) error { return adaptiveCopyPool(dst, src, &bufPool) }

// adaptiveCopyPool is adaptiveCopy with the burst buffers of pool.
func adaptiveCopyPool(dst io.Writer, src io.Reader, pool *sync.Pool) error {
	small := make([]byte, 2048)
	for {
		n, err := src.Read(small)
		if n > 0 {
			if _, werr := dst.Write(small[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
		if n < len(small) {
			continue
		}
		bp := pool.Get().(*[]byte)
		for {
			n, err = src.Read(*bp)
			if n > 0 {
				if _, werr := dst.Write((*bp)[:n]); werr != nil {
					pool.Put(bp)
					return werr
				}
			}
			if err != nil {
				pool.Put(bp)
				return err
			}
			if n < len(*bp)/2 {
				break
			}
		}
		pool.Put(bp)
	}
}

// httpError writes a minimal HTTP/1.1 error response with a Kubernetes Status body on a raw conn
// (used before any byte reached the agent).
func httpError(w io.Writer, code int, reason, msg string) {
	body := statusJSON(code, reason, msg)
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
		code, statusText(code), len(body))
	b.Write(body)
	_, _ = w.Write(b.Bytes())
}

// coalescingConn merges each yamux data-frame header with the body that yamux writes right after
// it, so a frame costs one TLS record and one syscall instead of two. yamux writes to its conn
// from its send loop only, one frame at a time: a 12-byte header of type Data with a non-zero
// length is always followed by its body. (Writing frames behind the send loop in batches was
// measured too: it cost more CPU per MiB and per small request than it saved, see
// docs/benchmarks.md.)
type coalescingConn struct {
	net.Conn
	hdr  [12]byte
	held bool
	buf  []byte
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	if !c.held && len(p) == 12 && p[0] == 0 && p[1] == 0 && (p[8]|p[9]|p[10]|p[11]) != 0 {
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	if !c.held {
		return c.Conn.Write(p)
	}
	c.held = false
	c.buf = append(append(c.buf[:0], c.hdr[:]...), p...)
	n, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 256*1024 {
		c.buf = nil
	}
	return max(n-12, 0), err
}
