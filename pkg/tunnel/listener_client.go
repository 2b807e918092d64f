package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"
)

// The kube listener's forwarder: every request but upgrades goes to the agent as HTTP/1.1 over a
// pooled stream, written and read by the handler's own goroutine (no http.Transport: no
// read and write loop goroutines per stream, no channel handoffs, no request clone). Upgrades
// keep the ReverseProxy path of listener.go.
//
// What the agent sees is what the ReverseProxy (Rewrite: SetURL to http://kubernetes, Host kept)
// with its http.Transport sent: the request line with the request's path and query (unparsable
// query parameters re-encoded), Host, the client's User-Agent (none invented), Content-Length or
// chunked framing, and every header but the hop-by-hop ones (Connection and those it names,
// Keep-Alive, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE but "trailers",
// Transfer-Encoding, Upgrade, Trailer) and the forwarding ones (Forwarded, X-Forwarded-For,
// -Host, -Proto: Rewrite drops them and sets none). Accept-Encoding passes as received.

const (
	// maxResponseHeaderBytes bounds a response header from the agent (502 beyond it).
	maxResponseHeaderBytes = 1 << 20
	// max1xxResponses bounds the informational responses passed on before the final one.
	max1xxResponses = 16
	// inlineBodyMax: a request body of known length up to this size is read before the request
	// is written and leaves with its header in one frame (and can be replayed on a fresh stream).
	inlineBodyMax = 16 << 10
	// maxPooledHead: request head buffers that grew beyond this are not pooled.
	maxPooledHead = 64 << 10
	// bodyWriteGrace is how long a finished response waits for its streamed request body to be
	// written before the stream is closed instead of reused (net/http waits 50 ms too).
	bodyWriteGrace = 50 * time.Millisecond
)

var (
	errResponseHeaderTooLarge = fmt.Errorf("agent response header exceeds %d bytes", maxResponseHeaderBytes)
	errTooMany1xx             = errors.New("agent sent too many 1xx informational responses")
)

// kubeForwarder forwards the requests of one auth mode over its own idle streams.
type kubeForwarder struct {
	l      *ClusterListener
	header StreamHeader
	pool   *streamPool
}

func newKubeForwarder(l *ClusterListener, h StreamHeader) *kubeForwarder {
	return &kubeForwarder{l: l, header: h, pool: newStreamPool(listenerMaxIdleStreams, listenerIdleTimeout)}
}

// respReader reads one stream's responses: a 1 KiB bufio.Reader over a byte-counting,
// header-limiting reader. It is taken from respReaderPool per request and given back once the
// response ended, so an idle stream holds no buffer.
type respReader struct {
	lc countingReader
	br *bufio.Reader
}

var respReaderPool = sync.Pool{New: func() any {
	rr := &respReader{}
	rr.br = bufio.NewReaderSize(&rr.lc, 1024)
	return rr
}}

func getRespReader(c io.Reader) *respReader {
	rr := respReaderPool.Get().(*respReader)
	rr.lc = countingReader{c: c, left: maxResponseHeaderBytes}
	return rr
}

func putRespReader(rr *respReader) {
	rr.lc = countingReader{}
	rr.br.Reset(&rr.lc)
	respReaderPool.Put(rr)
}

// countingReader counts the bytes read from the stream and, while a header is read, bounds them.
type countingReader struct {
	c    io.Reader
	left int64
	read int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, errResponseHeaderTooLarge
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.c.Read(p)
	r.left -= int64(n)
	r.read += int64(n)
	return n, err
}

// body modes of a forwarded request
const (
	bodyNone   = iota // no body (or Content-Length 0)
	bodyInline        // read in full, sent with the header
	bodyStream        // streamed by a goroutine while the response is read (full duplex)
)

// serve forwards r and copies the answer to w. Errors before the response header answer as the
// ReverseProxy's ErrorHandler did (forwardError); a response cut short aborts the client's
// stream (http.ErrAbortHandler), as the ReverseProxy does.
func (f *kubeForwarder) serve(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	mode, outLen := bodyNone, int64(0)
	switch cl := r.ContentLength; {
	case cl == 0 || r.Body == nil || r.Body == http.NoBody:
	case cl > 0 && cl <= inlineBodyMax:
		mode, outLen = bodyInline, cl
	default:
		mode, outLen = bodyStream, cl
	}
	hb := headPool.Get().(*[]byte)
	// exchange gives the buffer back once a response header arrived (no retry can follow), so
	// that a watch does not hold it.
	defer func() { putHead(hb) }()
	head, err := appendRequestHead((*hb)[:0], r, outLen)
	if err != nil {
		*hb = head
		f.l.forwardError(w, r, err)
		return
	}
	if mode == bodyInline {
		n := len(head)
		head = slices.Grow(head, int(r.ContentLength))[:n+int(r.ContentLength)]
		if _, err := io.ReadFull(r.Body, head[n:]); err != nil {
			*hb = head
			if ctx.Err() == nil {
				f.l.forwardError(w, r, fmt.Errorf("read request body: %w", err))
			}
			return
		}
	}
	*hb = head
	for attempt := 0; ; attempt++ {
		var c net.Conn
		if attempt == 0 {
			c = f.pool.get()
		}
		reused := c != nil
		if c == nil {
			if c, err = f.l.cfg.Dialer.DialStream(ctx, f.l.cfg.Cluster, f.header); err != nil {
				f.l.forwardError(w, r, err)
				return
			}
		}
		if !f.exchange(w, r, c, reused, &hb, mode) {
			return
		}
	}
}

func putHead(hb *[]byte) {
	if hb != nil && cap(*hb) <= maxPooledHead {
		*hb = (*hb)[:0]
		headPool.Put(hb)
	}
}

// exchange sends one request on c and copies its response; it returns true when the request
// failed on a reused stream in a way that allows one retry on a fresh stream (the agent closed
// the idle stream as the request left: nothing of a response was read, and the request can be
// sent again as it was). It is longer than the house's ~80 lines on purpose: one exchange is a
// sequence of decisions on the same stream state (written, read, reusable, retryable), and read
// top-down in one place the retry rule stays checkable.
func (f *kubeForwarder) exchange(w http.ResponseWriter, r *http.Request, c net.Conn, reused bool, hb **[]byte, mode int) (retry bool) {
	ctx := r.Context()
	head := **hb
	// The client went away: end the stream (the agent cancels the upstream request) and unblock
	// the reads and writes on it.
	stop := context.AfterFunc(ctx, func() {
		_ = c.SetDeadline(aLongTimeAgo)
		_ = c.Close()
	})
	if _, err := c.Write(head); err != nil {
		stop()
		_ = c.Close()
		if reused && mode != bodyStream && ctx.Err() == nil {
			return true // nothing was written: safe to send again
		}
		if ctx.Err() == nil {
			f.l.forwardError(w, r, err)
		}
		return false
	}
	var bodyDone chan error
	if mode == bodyStream {
		bodyDone = make(chan error, 1)
		go writeRequestBody(c, r, bodyDone)
	}
	rr := getRespReader(c)
	resp, err := readResponseHead(rr, r, w)
	if err != nil {
		read := rr.lc.read
		stop()
		_ = c.Close()
		putRespReader(rr)
		if ctx.Err() != nil {
			return false
		}
		if reused && read == 0 && mode != bodyStream && replayable(r) {
			return true
		}
		f.l.forwardError(w, r, err)
		return false
	}
	rr.lc.left = math.MaxInt64
	putHead(*hb)
	*hb = nil
	removeHopHeaders(resp.Header)
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	werr, rerr := copyResponseBody(w, resp, rr.br, longLived(r), rr.br.Buffered() == 0)
	if werr != nil || rerr != nil {
		stop()
		_ = c.Close()
		putRespReader(rr)
		if ctx.Err() == nil && ctx.Value(http.ServerContextKey) != nil {
			panic(http.ErrAbortHandler)
		}
		return false
	}
	if len(resp.Trailer) > 0 {
		// Force chunking towards an HTTP/1.1 client so that the trailers can follow.
		_ = http.NewResponseController(w).Flush()
		if len(resp.Trailer) == announced {
			for k, vv := range resp.Trailer {
				h[k] = vv
			}
		} else {
			for k, vv := range resp.Trailer {
				for _, v := range vv {
					h.Add(http.TrailerPrefix+k, v)
				}
			}
		}
	}
	reuse := !resp.Close && rr.br.Buffered() == 0
	putRespReader(rr)
	if reuse && bodyDone != nil {
		reuse = waitBodyWritten(bodyDone)
	}
	if reuse && stop() {
		f.pool.put(c)
		return false
	}
	stop()
	_ = c.Close()
	return false
}

// waitBodyWritten reports whether the streamed request body was written in full, waiting a
// moment for its last write.
func waitBodyWritten(done chan error) bool {
	select {
	case err := <-done:
		return err == nil
	default:
	}
	t := time.NewTimer(bodyWriteGrace)
	defer t.Stop()
	select {
	case err := <-done:
		return err == nil
	case <-t.C:
		return false
	}
}

// replayable: a request that may be sent twice (net/http's rule for retries on a reused
// connection): an idempotent method, or one that carries an idempotency key.
func replayable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := r.Header["Idempotency-Key"]
	_, b := r.Header["X-Idempotency-Key"]
	return a || b
}

// readResponseHead reads the final response header, passing 1xx informational responses on to
// the client (as the ReverseProxy does) and refusing 101 (no upgrade was asked for).
func readResponseHead(rr *respReader, r *http.Request, w http.ResponseWriter) (*http.Response, error) {
	for n := 0; ; n++ {
		resp, err := http.ReadResponse(rr.br, r)
		if err != nil {
			if err == io.ErrUnexpectedEOF && rr.lc.read == 0 {
				return nil, fmt.Errorf("agent closed the stream before answering: %w", err)
			}
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 999 {
			return nil, fmt.Errorf("agent sent a malformed status code %d", code)
		}
		if code == http.StatusSwitchingProtocols {
			return nil, fmt.Errorf("agent switched protocols (%q) on a request that asked for none", resp.Header.Get("Upgrade"))
		}
		if code >= 200 {
			return resp, nil
		}
		if n >= max1xxResponses {
			return nil, errTooMany1xx
		}
		h := w.Header()
		for k, vv := range resp.Header {
			h[k] = vv
		}
		w.WriteHeader(code)
		clear(h)
		rr.lc.left = maxResponseHeaderBytes
	}
}

// copyResponseBody copies the body: watches and upgrades with a 2 KiB buffer (they hold it for
// hours), the rest with 32 KiB; a response of unknown length (a watch, a chunked LIST, an event
// stream) is flushed after every piece, as the ReverseProxy does, and its header at once when no
// body byte is in hand yet (idle: a watch that has no event yet must still answer its header).
func copyResponseBody(w http.ResponseWriter, resp *http.Response, br *bufio.Reader, long, idle bool) (werr, rerr error) {
	pool := &bufPool
	if long {
		pool = &rpPool
	}
	var fl http.Flusher
	if resp.ContentLength == -1 || isEventStream(resp.Header) {
		if fl, _ = w.(http.Flusher); fl == nil {
			fl = flusherFunc(func() { _ = http.NewResponseController(w).Flush() })
		}
		if idle {
			fl.Flush()
		}
	}
	// A watch waits for its next event holding only the stream's read buffer: the copy buffer is
	// taken when bytes arrived. (Only where the body is not length-delimited: its last byte would
	// leave the body reader short of its EOF, and the wait would block on a stream gone idle.)
	wait := long && resp.ContentLength == -1 && br != nil
	for {
		if wait && br.Buffered() == 0 {
			_, _ = br.Peek(1) // an error reaches the body's Read below
		}
		bp := pool.Get().(*[]byte)
		n, err := resp.Body.Read(*bp)
		if n > 0 {
			if _, werr = w.Write((*bp)[:n]); werr != nil {
				pool.Put(bp)
				return werr, nil
			}
			if fl != nil {
				fl.Flush()
			}
		}
		pool.Put(bp)
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

type flusherFunc func()

func (f flusherFunc) Flush() { f() }

// isEventStream: Content-Type text/event-stream (with or without parameters), which the
// ReverseProxy flushes as it arrives.
func isEventStream(h http.Header) bool {
	ct := textproto.TrimString(h.Get("Content-Type"))
	const es = "text/event-stream"
	if len(ct) < len(es) || !strings.EqualFold(ct[:len(es)], es) {
		return false
	}
	rest := strings.TrimLeft(ct[len(es):], " \t")
	return rest == "" || rest[0] == ';'
}
