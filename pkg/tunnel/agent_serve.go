package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// The agent serves each tunnel stream with a small HTTP/1.1 server of its own (no net/http.Server,
// no httputil.ReverseProxy): an idle keep-alive stream holds no buffer (it waits for the first
// byte of the next request in a one-byte array), a request is read with a pooled bufio.Reader, its
// response is written straight to the stream (head in one buffer, a watch event in one write: one
// yamux frame), and an idle watch costs two goroutines of its own (one watches the stream for the
// caller going away, one copies events). Request reading and response writing live in
// agent_http.go.

// agentMaxHeaderBytes caps a request's line and header (net/http's DefaultMaxHeaderBytes): 431
// beyond it.
const agentMaxHeaderBytes = http.DefaultMaxHeaderBytes

// upstream is one of the two addresses the agent forwards to.
type upstream struct {
	name   string // for logs and the 502 text: "kube-apiserver", "ks-apiserver"
	target *url.URL
	rt     http.RoundTripper
}

// agentServer serves the agent's streams and keeps their registry (for drain: idle streams are
// closed at once, busy ones answer Connection: close and close after their response).
type agentServer struct {
	log         logr.Logger
	kube, ks    upstream
	headTimeout time.Duration
	maxHeader   int

	ctx    context.Context // cancelled by shutdown: requests still waiting for an upstream end
	cancel context.CancelFunc

	// relay serves kubernetes-h2 streams (nil: the agent does not offer them).
	relay *KubeRelay

	noKeepAlive atomic.Bool
	mu          sync.Mutex
	conns       map[*agentConn]struct{}
	relays      map[*h2Relay]struct{}
	active      sync.WaitGroup
}

func newAgentServer(kube, ks upstream, headTimeout time.Duration, log logr.Logger) *agentServer {
	s := &agentServer{log: log, kube: kube, ks: ks, headTimeout: headTimeout, maxHeader: agentMaxHeaderBytes,
		conns: make(map[*agentConn]struct{}), relays: make(map[*h2Relay]struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// setKeepAlives turns keep-alive on or off (as http.Server.SetKeepAlivesEnabled): off closes the
// idle streams at once; busy ones close after their response (which says Connection: close when
// its head has not left yet).
func (s *agentServer) setKeepAlives(on bool) {
	s.noKeepAlive.Store(!on)
	if on {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.idle {
			c.closing = true
			c.closeConn()
		}
	}
	for r := range s.relays {
		r.goAway()
	}
}

// shutdown closes every stream still registered and cancels the requests in flight, then waits
// for their loops to end (Run calls it after the drain has closed the session).
func (s *agentServer) shutdown() {
	s.noKeepAlive.Store(true)
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.closing = true
		c.closeConn()
	}
	for r := range s.relays {
		r.close()
	}
	s.mu.Unlock()
	s.active.Wait()
}

// agentConn is one stream being served.
type agentConn struct {
	s      *agentServer
	conn   net.Conn // writes carry the pending "OK\n" (prefixWriter)
	header StreamHeader
	ctx    context.Context // s.ctx with the stream header (kubeTransport reads it)

	one     [1]byte         // the first byte of the next request, read while idle
	pre     bytesThenReader // bytes read ahead of the request reader, then the stream
	has     bool            // pre holds bytes for the next request
	br      *bufio.Reader   // pooled; nil while idle
	lr      io.LimitedReader
	closeMu sync.Once

	// idle and closing are guarded by s.mu.
	idle, closing bool
}

func (c *agentConn) closeConn() {
	c.closeMu.Do(func() {
		// Unblock a read in progress (a yamux Close is a half-close: reads would go on).
		_ = c.conn.SetReadDeadline(time.Unix(1, 0))
		_ = c.conn.Close()
	})
}

// setIdle records whether the loop waits for a request; it reports false when the stream must
// close instead (keep-alive off, or the server closed it).
func (c *agentConn) setIdle(idle bool) bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.closing {
		return false
	}
	if idle && c.s.noKeepAlive.Load() {
		c.closing = true
		return false
	}
	c.idle = idle
	return true
}

// serveStream serves HTTP/1.1 requests on an accepted stream whose header was answered (conn
// sends the "OK\n" with the first response bytes). br holds what was read with the header.
func (s *agentServer) serveStream(conn net.Conn, br *bufio.Reader, h StreamHeader) {
	c := &agentConn{s: s, conn: conn, header: h, ctx: context.WithValue(s.ctx, streamInfoKey{}, h)}
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.active.Add(1)
	s.mu.Unlock()
	if n := br.Buffered(); n > 0 {
		// The first request came with the header (in the same frame): read those bytes first.
		b, _ := br.Peek(n)
		c.pre.pre, c.has = b, true
	}
	if c.loop() != stepHandedOff {
		c.end()
	}
}

// end unregisters the stream and closes it.
func (c *agentConn) end() {
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	c.closeConn()
	c.s.active.Done()
}

// watchedLength is the response length from which the copy runs beside a goroutine watching the
// stream (as for responses without a length): a caller that goes away in the middle of a large
// GET or LIST ends the upstream request instead of the agent writing the rest into a closed
// stream until its window is full.
const watchedLength = 64 << 10

// step is what follows a request: the next one, the end of the stream, or nothing in this
// goroutine (a watch handed the stream to goroutines of its own, see watch).
type step int

const (
	stepNext step = iota
	stepStop
	stepHandedOff
)

// loop serves requests until the stream ends or must close (stepStop: the caller ends the stream)
// or another goroutine took it over (stepHandedOff).
func (c *agentConn) loop() step {
	for {
		if c.br == nil && !c.has {
			if !c.setIdle(true) {
				return stepStop
			}
			shrink(c.conn)
			n, err := c.conn.Read(c.one[:])
			if !c.setIdle(false) || err != nil || n == 0 {
				return stepStop
			}
			c.pre.pre, c.has = c.one[:1], true
		}
		if st := c.serveOne(); st != stepNext {
			return st
		}
	}
}

// shrink lets a yamux stream drop its receive buffer while the stream is idle.
func shrink(conn net.Conn) {
	if pw, ok := conn.(*prefixWriter); ok {
		conn = pw.Conn
	}
	if sh, ok := conn.(interface{ Shrink() }); ok {
		sh.Shrink()
	}
}

var agentReaderPool sync.Pool

// reader returns the request reader (a pooled one, fed the bytes read ahead first).
func (c *agentConn) reader() *bufio.Reader {
	if c.br != nil {
		return c.br
	}
	c.pre.r = c.conn
	if !c.has {
		c.pre.pre = nil
	}
	c.has = false
	c.lr = io.LimitedReader{R: &c.pre, N: 1<<62 - 1}
	if br, ok := agentReaderPool.Get().(*bufio.Reader); ok {
		br.Reset(&c.lr)
		c.br = br
	} else {
		c.br = bufio.NewReaderSize(&c.lr, 4096)
	}
	return c.br
}

// release returns the pooled reader when nothing is buffered in it (a pipelined request keeps it).
func (c *agentConn) release() {
	if c.br == nil || c.br.Buffered() > 0 || len(c.pre.pre) > 0 {
		return
	}
	c.br.Reset(nil)
	agentReaderPool.Put(c.br)
	c.br = nil
	c.lr = io.LimitedReader{}
	c.pre = bytesThenReader{}
}

// bytesThenReader yields pre, then reads r.
type bytesThenReader struct {
	pre []byte
	r   io.Reader
}

func (r *bytesThenReader) Read(p []byte) (int, error) {
	if len(r.pre) == 0 {
		return r.r.Read(p)
	}
	n := copy(p, r.pre)
	r.pre = r.pre[n:]
	return n, nil
}

// serveOne reads, forwards and answers one request.
func (c *agentConn) serveOne() step {
	br := c.reader()
	_ = c.conn.SetReadDeadline(time.Now().Add(c.s.headTimeout))
	c.lr.N = int64(c.s.maxHeader) + 4096
	req, err := readAgentRequest(br, &c.lr)
	c.lr.N = 1<<62 - 1
	_ = c.conn.SetReadDeadline(time.Time{})
	if err != nil {
		var he *headError
		if errors.As(err, &he) {
			writeRaw(c.conn, he.code, he.msg)
			c.s.log.V(1).Info("bad request on stream", "reason", he.Error())
		}
		return stepStop
	}
	return c.forward(req)
}

// agentBody is a request body as the upstream transport reads it: its Close does nothing (the
// transport may close it while the caller is still sending; the stream decides what happens to
// the rest) and it records whether it was read to its end.
type agentBody struct {
	r    io.ReadCloser
	done atomic.Bool
	bad  atomic.Bool
	// continue100 writes "100 Continue" before the first read (Expect: 100-continue).
	continue100 func()
}

func (b *agentBody) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	if f := b.continue100; f != nil {
		b.continue100 = nil
		f()
	}
	n, err := b.r.Read(p)
	switch {
	case err == io.EOF:
		b.done.Store(true)
	case err != nil:
		b.bad.Store(true)
	}
	return n, err
}

func (b *agentBody) Close() error { return nil }

// forward sends req to its upstream and writes the answer. It is a little over the house's ~80
// lines on purpose: every early answer (401, 403, 502) and the choice between an inline copy, a
// watched stream and an upgrade decide together whether the stream serves another request (done).
func (c *agentConn) forward(req *http.Request) step {
	clientClose := req.Close
	req.Close = false
	hasBody := req.ContentLength != 0
	var body *agentBody
	if hasBody {
		body = &agentBody{r: req.Body}
		req.Body = body
	} else {
		req.Body = nil
	}
	w := &respWriter{conn: c.conn, method: req.Method, http11: req.ProtoAtLeast(1, 1), noKeepAlive: &c.s.noKeepAlive}
	w.close = clientClose || c.s.noKeepAlive.Load()
	if hasBody && headerHasToken(req.Header, "Expect", "100-continue") && req.ProtoAtLeast(1, 1) {
		body.continue100 = w.writeContinue
	}
	// done tells whether the stream can serve the next request.
	done := func(ok bool) step {
		if !ok || w.close || (hasBody && (!body.done.Load() || body.bad.Load())) || c.s.noKeepAlive.Load() {
			return stepStop
		}
		c.release()
		return stepNext
	}
	var up *upstream
	switch c.header.Target {
	case TargetKubernetes:
		if c.header.Auth == AuthToken && req.Header.Get("Authorization") == "" {
			if hasBody {
				w.close = true
			}
			w.writeStatus(http.StatusUnauthorized, "Unauthorized", tokenStreamAdvice)
			return done(w.err == nil)
		}
		up = &c.s.kube
	case TargetKubeSphere:
		up = &c.s.ks
	default:
		w.close = true
		w.writeStatus(http.StatusForbidden, "Forbidden", "ks-mc agent: unknown target")
		return stepStop
	}
	long := longLived(req)
	upgrade := isUpgrade(req)
	upType := ""
	if upgrade {
		upType = req.Header.Get("Upgrade")
	}
	if !outboundRequest(req, up.target, upType) {
		w.close = true
		w.writeStatus(http.StatusBadGateway, "ServiceUnavailable",
			fmt.Sprintf("ks-mc agent: %s unreachable: client tried to switch to invalid protocol %q", up.name, upType))
		return stepStop
	}
	ctx := c.ctx
	var cancel context.CancelFunc = func() {}
	if long {
		ctx, cancel = context.WithCancel(ctx)
	}
	if body != nil && body.continue100 != nil {
		// The upstream's own "100 Continue" is not passed on: the agent answers it when the
		// upstream transport first reads the body.
		req.Header.Del("Expect")
	}
	req = req.WithContext(ctx)
	resp, err := up.rt.RoundTrip(req)
	if err != nil {
		cancel()
		if ctx.Err() != nil && c.s.ctx.Err() != nil {
			return stepStop // the agent stops
		}
		c.s.log.V(1).Info("forward failed", "target", up.name, "path", req.URL.Path, "err", err.Error())
		w.writeStatus(http.StatusBadGateway, "ServiceUnavailable", fmt.Sprintf("ks-mc agent: %s unreachable: %v", up.name, err))
		return done(w.err == nil)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		c.upgrade(w, req, resp, upType, cancel)
		cancel()
		return stepStop
	}
	if !hasBody && (w.streamsBody(resp) || resp.ContentLength > watchedLength && bodyAllowed(w.method, resp.StatusCode)) {
		// No length: a watch, or a response that may stream for long (logs -f, a chunked
		// LIST); or a large one: watch the stream for the caller going away while copying.
		return c.watch(w, resp, cancel, long)
	}
	defer cancel()
	return done(w.writeResponse(resp, long))
}

func isPrintASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
