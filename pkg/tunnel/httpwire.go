package tunnel

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
)

// The HTTP/1.1 pieces both ends of a tunnel stream share: the agent's stream server
// (agent_serve.go, agent_http.go) and the kube listener's client (listener_client.go,
// listener_request.go) read and write the same framing, so they drop the same hop-by-hop headers,
// validate names and values the same way and encode queries alike.

// validToken accepts a header field name (RFC 9110 token).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHost accepts the bytes httpguts.ValidHostHeader accepts.
func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!$%&'()*+,-./:;=?@[]_~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// hopHeaders are removed in both directions (httputil.ReverseProxy's list), with the headers
// Connection names.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// cleanQuery re-encodes a query url.ParseQuery would reject (semicolons, bad escapes), as the
// reverse proxy does.
func cleanQuery(s string) string {
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			v, _ := url.ParseQuery(s)
			return v.Encode()
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				v, _ := url.ParseQuery(s)
				return v.Encode()
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// headPool holds the buffers response heads are written into.
var headPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// appendHeaderLine appends "k: v\r\n", with CR and LF in v replaced by spaces (as net/http's
// header writer does).
func appendHeaderLine(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == '\r' || c == '\n' {
			b = append(b, ' ')
		} else {
			b = append(b, c)
		}
	}
	return append(b, "\r\n"...)
}

func headerValueHasToken(v, token string) bool {
	for f := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(textproto.TrimString(f), token) {
			return true
		}
	}
	return false
}

// trimHeaderValue trims the spaces and tabs around a value (as net/http writes it).
func trimHeaderValue(v string) string {
	return strings.Trim(v, " \t")
}

// validHeaderValue refuses control characters other than tab (CR and LF above all: the value
// goes onto the stream as is).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
