package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// writeRequestBody streams r's body to c (Content-Length or chunked framing). On failure it ends
// the stream: the agent must not take a cut body for a whole one.
func writeRequestBody(c net.Conn, r *http.Request, done chan<- error) {
	bp := bufPool.Get().(*[]byte)
	var err error
	if r.ContentLength > 0 {
		err = copyFixedBody(c, r.Body, r.ContentLength, *bp)
	} else {
		err = copyChunkedBody(c, r, *bp)
	}
	bufPool.Put(bp)
	if err != nil {
		_ = c.SetDeadline(aLongTimeAgo)
		_ = c.Close()
	}
	done <- err
}

func copyFixedBody(c net.Conn, body io.Reader, n int64, buf []byte) error {
	for n > 0 {
		p := buf
		if int64(len(p)) > n {
			p = p[:n]
		}
		m, err := body.Read(p)
		if m > 0 {
			if _, werr := c.Write(p[:m]); werr != nil {
				return werr
			}
			n -= int64(m)
		}
		if err == io.EOF {
			if n > 0 {
				return io.ErrUnexpectedEOF
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// copyChunkedBody writes each piece as one chunk (size line, data and CRLF in one write), then
// the last chunk with the request's trailers.
func copyChunkedBody(c net.Conn, r *http.Request, buf []byte) error {
	const pre = 10 // hex size (at most 8 digits) and CRLF
	for {
		n, err := r.Body.Read(buf[pre : len(buf)-2])
		if n > 0 {
			size := strconv.AppendInt(buf[:0:0], int64(n), 16)
			start := pre - len(size) - 2
			copy(buf[start:], size)
			buf[pre-2], buf[pre-1] = '\r', '\n'
			buf[pre+n], buf[pre+n+1] = '\r', '\n'
			if _, werr := c.Write(buf[start : pre+n+2]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			end := append(buf[:0], "0\r\n"...)
			for _, k := range sortedKeys(map[string][]string(r.Trailer)) {
				for _, v := range r.Trailer[k] {
					if !validToken(k) || !validHeaderValue(v) {
						continue
					}
					end = append(append(append(append(end, k...), ": "...), trimHeaderValue(v)...), "\r\n"...)
				}
			}
			end = append(end, "\r\n"...)
			_, werr := c.Write(end)
			return werr
		}
		if err != nil {
			return err
		}
	}
}

// appendRequestHead appends the HTTP/1.1 request line and header that the agent gets for r, whose
// body is length bytes long (-1: unknown, sent chunked).
func appendRequestHead(b []byte, r *http.Request, length int64) ([]byte, error) {
	host := r.Host
	if host == "" {
		host = TargetKubernetes
	}
	if !validHost(host) {
		return b, errors.New("invalid Host header")
	}
	if !validToken(r.Method) {
		return b, fmt.Errorf("invalid method %q", r.Method)
	}
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = appendRequestURI(b, r.URL)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	if ua := r.Header["User-Agent"]; len(ua) > 0 {
		if !validHeaderValue(ua[0]) {
			return b, errors.New(`invalid header field value for "User-Agent"`)
		}
		if v := trimHeaderValue(ua[0]); v != "" {
			b = append(append(append(b, "User-Agent: "...), v...), "\r\n"...)
		}
	}
	b, err := appendFraming(b, r, length)
	if err != nil {
		return b, err
	}
	if b, err = appendHeaderFields(b, r); err != nil {
		return b, err
	}
	return append(b, "\r\n"...), nil
}

// appendFraming appends the body framing of a request whose body is length bytes long (-1:
// chunked, with the Trailer header the request announces).
func appendFraming(b []byte, r *http.Request, length int64) ([]byte, error) {
	switch {
	case length < 0:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		if keys := sortedKeys(map[string][]string(r.Trailer)); len(keys) > 0 {
			b = append(b, "Trailer: "...)
			for i, k := range keys {
				if !validToken(k) {
					return b, fmt.Errorf("invalid trailer name %q", k)
				}
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, http.CanonicalHeaderKey(k)...)
			}
			b = append(b, "\r\n"...)
		}
	case length > 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, length, 10)
		b = append(b, "\r\n"...)
	case r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch:
		// net/http sends Content-Length: 0 for these methods ("many servers expect" it).
		b = append(b, "Content-Length: 0\r\n"...)
	}
	return b, nil
}

// appendHeaderFields appends r's header fields but the dropped ones (requestHeaderDropped) and
// those Connection names, sorted, with "Te: trailers" kept when the client asked for trailers.
func appendHeaderFields(b []byte, r *http.Request) ([]byte, error) {
	var named []string // headers named by Connection
	for _, v := range r.Header["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				named = append(named, http.CanonicalHeaderKey(f))
			}
		}
	}
	var arr [32]string
	keys := arr[:0]
	for k := range r.Header {
		if requestHeaderDropped(k) || slices.Contains(named, k) {
			continue
		}
		keys = append(keys, k)
	}
	trailersTE := false
	for _, v := range r.Header["Te"] {
		if headerValueHasToken(v, "trailers") {
			trailersTE = true
			break
		}
	}
	if trailersTE {
		keys = append(keys, "Te")
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k == "Te" {
			b = append(b, "Te: trailers\r\n"...)
			continue
		}
		if !validToken(k) {
			return b, fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range r.Header[k] {
			if !validHeaderValue(v) {
				return b, fmt.Errorf("invalid header field value for %q", k)
			}
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, trimHeaderValue(v)...)
			b = append(b, "\r\n"...)
		}
	}
	return b, nil
}

// requestHeaderDropped: headers the agent never gets from the client (hop-by-hop, the forwarding
// headers the ReverseProxy's Rewrite removed, and the ones the request line, Host and framing
// replace). "Te" is dropped here and re-added as "trailers" when the client asked for trailers.
func requestHeaderDropped(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
		"Host", "User-Agent", "Content-Length":
		return true
	}
	return false
}

// appendRequestURI appends the request-URI the ReverseProxy's SetURL and the Transport wrote:
// the path joined onto the target's empty path (so it starts with "/"), and the query with
// unparsable parameters re-encoded.
func appendRequestURI(b []byte, in *url.URL) []byte {
	u := *in
	if u.RawPath == "" {
		if !strings.HasPrefix(u.Path, "/") {
			u.Path = "/" + u.Path
		}
	} else if ep := in.EscapedPath(); !strings.HasPrefix(ep, "/") {
		u.Path, u.RawPath = "/"+u.Path, "/"+ep
	} else {
		u.RawPath = ep
	}
	u.RawQuery = cleanQuery(u.RawQuery)
	if u.Opaque != "" {
		u.Scheme, u.Host = "http", TargetKubernetes
		return append(b, u.RequestURI()...)
	}
	b = append(b, u.EscapedPath()...)
	if u.ForceQuery || u.RawQuery != "" {
		b = append(b, '?')
		b = append(b, u.RawQuery...)
	}
	return b
}
