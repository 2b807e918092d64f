package tunnel

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Request reading and response writing of the agent's stream server (agent_serve.go): standard
// HTTP/1.1, as net/http's server reads requests and as httputil.ReverseProxy forwards them.

// headError is a request head the agent answers with an error status before closing the stream.
type headError struct {
	code int
	msg  string
	err  error
}

func (e *headError) Error() string { return e.msg + ": " + e.err.Error() }
func (e *headError) Unwrap() error { return e.err }

// readAgentRequest reads one request head from br (lr bounds what br may read: when it runs out,
// the head was too large). A stream that ends or times out gets no answer (the error is returned
// as is); a malformed head is a *headError (400, or 431 beyond the cap).
func readAgentRequest(br *bufio.Reader, lr *io.LimitedReader) (*http.Request, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		if lr.N <= 0 {
			return nil, &headError{code: http.StatusRequestHeaderFieldsTooLarge, msg: "Request Header Fields Too Large", err: err}
		}
		if quietReadError(err) {
			return nil, err
		}
		return nil, &headError{code: http.StatusBadRequest, msg: "Bad Request", err: err}
	}
	bad := func(msg string) (*http.Request, error) {
		return nil, &headError{code: http.StatusBadRequest, msg: "Bad Request", err: errors.New(msg)}
	}
	for k := range req.Header {
		if !validToken(k) {
			return bad("invalid header name")
		}
	}
	// http.ReadRequest moved the Host header to req.Host.
	switch {
	case req.ProtoMajor != 1:
		return bad("unsupported protocol version")
	case req.Method == http.MethodConnect:
		return bad("CONNECT is not served")
	case req.URL.Opaque != "":
		return bad("request target is neither a path nor an absolute URL")
	case req.ProtoAtLeast(1, 1) && req.Host == "":
		return bad("missing required Host header")
	case !validHost(req.Host):
		return bad("malformed Host header")
	}
	return req, nil
}

// quietReadError is an error of the stream, not of the request (net/http does not answer those).
func quietReadError(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeRaw answers a request that could not be read (as net/http's server does) and closes.
func writeRaw(w io.Writer, code int, msg string) {
	s := strconv.Itoa(code) + " " + msg
	_, _ = io.WriteString(w, "HTTP/1.1 "+s+"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+s)
}

// outboundRequest turns a request read from the stream into the upstream's request, in place, as
// the reverse proxy did: the target's scheme and host (its path prefix joined), the Host header the
// upstream's, hop-by-hop headers removed (Connection/Upgrade kept for an upgrade, TE: trailers
// kept), forwarding headers dropped, no User-Agent added. It reports false for an upgrade to a
// protocol name that is not printable ASCII.
func outboundRequest(req *http.Request, target *url.URL, upType string) bool {
	if !isPrintASCII(upType) {
		return false
	}
	te := headerHasToken(req.Header, "Te", "trailers")
	removeHopHeaders(req.Header)
	if te {
		req.Header.Set("Te", "trailers")
	}
	if upType != "" {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", upType)
	}
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		delete(req.Header, k)
	}
	req.URL.RawQuery = cleanQuery(req.URL.RawQuery)
	setTargetURL(req.URL, target)
	req.Host = ""
	req.RequestURI = ""
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // no Go default
	}
	return true
}

// setTargetURL is httputil.ProxyRequest.SetURL's URL rewrite.
func setTargetURL(u, target *url.URL) {
	u.Scheme, u.Host = target.Scheme, target.Host
	if target.Path != "" || target.RawPath != "" {
		u.Path, u.RawPath = joinURLPath(target, u)
	}
	switch {
	case target.RawQuery == "":
	case u.RawQuery == "":
		u.RawQuery = target.RawQuery
	default:
		u.RawQuery = target.RawQuery + "&" + u.RawQuery
	}
}

func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath, bpath := a.EscapedPath(), b.EscapedPath()
	aslash, bslash := strings.HasSuffix(apath, "/"), strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

// respWriter writes one response to the stream.
type respWriter struct {
	conn   net.Conn
	method string
	http11 bool // the request is HTTP/1.1 (chunked framing allowed)
	// close: the response says Connection: close and the stream closes after it; noKeepAlive
	// (the server's) turns it on when a drain starts before the head leaves.
	close       bool
	noKeepAlive *atomic.Bool
	err         error

	mu         sync.Mutex // orders a "100 Continue" and the head
	headSent   bool
	continued  bool
	chunked    bool
	rawToClose bool // an HTTP/1.0 caller without a length: the end of the stream ends the body
}

func (w *respWriter) write(p []byte) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.conn.Write(p); err != nil {
		w.err = err
	}
	return w.err
}

// writeContinue answers Expect: 100-continue when the upstream first reads the body.
func (w *respWriter) writeContinue() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.headSent || w.continued {
		return
	}
	w.continued = true
	_ = w.write([]byte("HTTP/1.1 100 Continue\r\n\r\n"))
}

// writeStatus answers with a Kubernetes Status body (as writeStatus does through net/http).
func (w *respWriter) writeStatus(code int, reason, msg string) {
	body := statusJSON(code, reason, msg)
	h := http.Header{"Content-Type": {"application/json"}, "X-Content-Type-Options": {"nosniff"}}
	resp := &http.Response{StatusCode: code, Header: h, ContentLength: int64(len(body))}
	if w.head(resp, body) != nil {
		w.close = true
	}
}

func bodyAllowed(method string, code int) bool {
	return method != http.MethodHead && code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// streamsBody reports a response whose body is copied piece by piece as it arrives (no length).
func (w *respWriter) streamsBody(resp *http.Response) bool {
	return resp.ContentLength < 0 && bodyAllowed(w.method, resp.StatusCode)
}

// appendHead renders the status line and headers of resp (hop-by-hop headers removed, framing
// the agent's own).
func (w *respWriter) appendHead(b []byte, resp *http.Response, upgrade bool) []byte {
	code := resp.StatusCode
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	if t := http.StatusText(code); t != "" {
		b = append(b, t...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(code), 10)
	}
	b = append(b, "\r\n"...)
	h := resp.Header
	if !upgrade {
		removeHopHeaders(h)
	}
	body := bodyAllowed(w.method, code)
	if body {
		delete(h, "Content-Length")
	}
	for k, vv := range h {
		for _, v := range vv {
			b = appendHeaderLine(b, k, v)
		}
	}
	if upgrade {
		return append(b, "\r\n"...)
	}
	if body {
		switch {
		case resp.ContentLength >= 0 && len(resp.Trailer) == 0:
			b = append(b, "Content-Length: "...)
			b = strconv.AppendInt(b, resp.ContentLength, 10)
			b = append(b, "\r\n"...)
		case w.http11:
			w.chunked = true
			if len(resp.Trailer) > 0 {
				keys := make([]string, 0, len(resp.Trailer))
				for k := range resp.Trailer {
					keys = append(keys, k)
				}
				b = appendHeaderLine(b, "Trailer", strings.Join(keys, ", "))
			}
			b = append(b, "Transfer-Encoding: chunked\r\n"...)
		default:
			w.rawToClose, w.close = true, true
		}
	}
	if !w.close && w.noKeepAlive != nil && w.noKeepAlive.Load() {
		w.close = true
	}
	if w.close {
		b = append(b, "Connection: close\r\n"...)
	}
	return append(b, "\r\n"...)
}

// head writes the response head, with body (a short, complete body) in the same write.
func (w *respWriter) head(resp *http.Response, body []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	bp := headPool.Get().(*[]byte)
	b := w.appendHead((*bp)[:0], resp, false)
	if bodyAllowed(w.method, resp.StatusCode) {
		b = append(b, body...)
	}
	w.headSent = true
	err := w.write(b)
	if cap(b) <= 16<<10 {
		*bp = b[:0]
		headPool.Put(bp)
	}
	return err
}

// writeHead writes the head of a response whose body follows.
func (w *respWriter) writeHead(resp *http.Response) error { return w.head(resp, nil) }

// writeUpgradeHead writes a 101 with the upstream's headers (Connection and Upgrade included).
func (w *respWriter) writeUpgradeHead(resp *http.Response) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	bp := headPool.Get().(*[]byte)
	b := w.appendHead((*bp)[:0], resp, true)
	w.headSent = true
	err := w.write(b)
	if cap(b) <= 16<<10 {
		*bp = b[:0]
		headPool.Put(bp)
	}
	return err
}

// writeResponse writes a whole response: the head and a body with a length in as few writes as
// 32 KiB allow (the head and a small body leave together), a body without one chunk by chunk as
// it arrives. It reports whether the response ended cleanly.
func (w *respWriter) writeResponse(resp *http.Response, long bool) bool {
	if !bodyAllowed(w.method, resp.StatusCode) {
		_ = resp.Body.Close()
		return w.head(resp, nil) == nil
	}
	if resp.ContentLength < 0 || len(resp.Trailer) > 0 {
		if w.writeHead(resp) != nil {
			_ = resp.Body.Close()
			return false
		}
		return w.copyBody(resp, long)
	}
	// A body with a length: fill 32 KiB buffers, the first one behind the head.
	defer resp.Body.Close()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	w.mu.Lock()
	hb := headPool.Get().(*[]byte)
	h := w.appendHead((*hb)[:0], resp, false)
	w.headSent = true
	w.mu.Unlock()
	off := 0
	if len(h) <= len(buf)/2 {
		off = copy(buf, h)
	} else if w.write(h) != nil {
		return false
	}
	if cap(h) <= 16<<10 {
		*hb = h[:0]
		headPool.Put(hb)
	}
	left := resp.ContentLength
	for {
		n, err := readFull(resp.Body, buf[off:min(int64(len(buf)), int64(off)+left)])
		left -= int64(n)
		if off+n > 0 && w.write(buf[:off+n]) != nil {
			return false
		}
		off = 0
		switch {
		case left == 0:
			if err == nil {
				// Let the transport see the end (an HTTP/2 stream's END_STREAM) so that it keeps
				// the connection and resets nothing.
				_, err = resp.Body.Read(buf[:1])
			}
			return err == io.EOF
		case err != nil:
			return false // short body: the stream ends, the caller sees it cut
		}
	}
}

// readFull reads until p is full, EOF or an error.
func readFull(r io.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// copyBody copies a body without a length as it arrives: each piece read leaves at once as one
// chunk in one write (one yamux frame per watch event), 2 KiB at a time for watches and upgrades,
// 32 KiB for the rest; then the last chunk and the trailers. It reports a clean end.
//
// A watch waits for its next event holding no buffer: it reads the event's first byte into a
// one-byte array and takes a pooled buffer for the rest, which arrived with it (the
// kube-apiserver flushes each event whole: one HTTP/2 DATA frame or HTTP/1.1 chunk).
func (w *respWriter) copyBody(resp *http.Response, long bool) bool {
	defer resp.Body.Close()
	const pre = 10 // room for the chunk size line (8 hex digits + CRLF)
	var first [1]byte
	for {
		var bp *[]byte
		got := 0
		if long {
			n, err := resp.Body.Read(first[:])
			if n == 0 {
				if err == io.EOF {
					return w.endBody(resp, nil)
				}
				if err != nil {
					return false
				}
				continue
			}
			bp = rpPool.Get().(*[]byte)
			got = 1
			if w.chunked {
				(*bp)[pre] = first[0]
			} else {
				(*bp)[0] = first[0]
			}
			if err != nil {
				// The byte came with the end: write it, then finish.
				ok := w.writePiece(*bp, got, pre) && err == io.EOF && w.endBody(resp, *bp)
				rpPool.Put(bp)
				return ok
			}
		} else {
			bp = bufPool.Get().(*[]byte)
		}
		ok, end := w.copyPieces(resp, *bp, got, pre, long)
		if long {
			rpPool.Put(bp)
		} else {
			bufPool.Put(bp)
		}
		if !ok || end {
			return ok
		}
	}
}

// copyPieces copies pieces with buf (got bytes already in it) and reports (clean, ended); a watch
// returns to copyBody after each piece, to wait for the next one without the buffer.
func (w *respWriter) copyPieces(resp *http.Response, buf []byte, got, pre int, long bool) (bool, bool) {
	for {
		var n int
		var err error
		if w.chunked {
			n, err = resp.Body.Read(buf[pre+got : len(buf)-2])
		} else {
			n, err = resp.Body.Read(buf[got:])
		}
		n += got
		got = 0
		if n > 0 && !w.writePiece(buf, n, pre) {
			return false, true
		}
		if err == io.EOF {
			return w.endBody(resp, buf), true
		}
		if err != nil {
			return false, true
		}
		if long && n > 0 {
			return true, false
		}
	}
}

// writePiece writes n bytes of buf (from pre when chunked) as one chunk in one write.
func (w *respWriter) writePiece(buf []byte, n, pre int) bool {
	if !w.chunked {
		return w.write(buf[:n]) == nil
	}
	var size [8]byte
	hex := strconv.AppendInt(size[:0], int64(n), 16)
	start := pre - 2 - len(hex)
	copy(buf[start:], hex)
	buf[pre-2], buf[pre-1] = '\r', '\n'
	buf[pre+n], buf[pre+n+1] = '\r', '\n'
	return w.write(buf[start:pre+n+2]) == nil
}

// endBody writes the last chunk and the trailers (buf: scratch space, nil for a fresh one).
func (w *respWriter) endBody(resp *http.Response, buf []byte) bool {
	if !w.chunked {
		return !w.rawToClose
	}
	_ = resp.Body.Close() // fills resp.Trailer
	b := append(buf[:0], "0\r\n"...)
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			b = appendHeaderLine(b, k, v)
		}
	}
	b = append(b, "\r\n"...)
	return w.write(b) == nil
}
