package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Hostile-input tests of the agent's HTTP/2 relay (relay_h2.go), driven directly over net.Pipes:
// the test writes the client's frames (http2.Framer, one hpack encoder for the connection) and
// reads, decoded with hpack decoders of its own, what reaches the kube-apiserver's end and the
// client's. Every helper here is prefixed hx (relay_h2_test.go is another author's).

// hxToken is the agent's bearer token in these tests: it must never show in an error.
const hxToken = "agent-token-Qm7Zr2x9"

// hxWait bounds every wait for a condition: reaching it means the relay hung, a failure.
const hxWait = 30 * time.Second

// hxRecorder keeps what one end of a pipe receives, for waits on what arrived so far.
type hxRecorder struct {
	mu      sync.Mutex
	buf     []byte
	err     error
	changed chan struct{}
	done    chan struct{}
}

func hxRecord(r io.Reader) *hxRecorder {
	rec := &hxRecorder{changed: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(rec.done)
		p := make([]byte, 64<<10)
		for {
			n, err := r.Read(p)
			rec.mu.Lock()
			rec.buf = append(rec.buf, p[:n]...)
			if err != nil {
				rec.err = err
			}
			close(rec.changed)
			rec.changed = make(chan struct{})
			rec.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return rec
}

// wait returns what arrived once cond holds for it; the end of the pipe or hxWait first is a
// failure.
func (rec *hxRecorder) wait(t *testing.T, what string, cond func([]byte) bool) []byte {
	t.Helper()
	timeout := time.NewTimer(hxWait)
	defer timeout.Stop()
	for {
		rec.mu.Lock()
		b, ch, err := rec.buf, rec.changed, rec.err
		rec.mu.Unlock()
		if cond(b) {
			return b
		}
		if err != nil {
			t.Fatalf("%s: the pipe ended (%v) first; %d bytes arrived", what, err, len(b))
		}
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("%s: not after %v; %d bytes arrived", what, hxWait, len(b))
		}
	}
}

// all returns everything that arrived, once the pipe has ended.
func (rec *hxRecorder) all(t *testing.T) []byte {
	t.Helper()
	select {
	case <-rec.done:
	case <-time.After(hxWait):
		t.Fatalf("the pipe did not end within %v", hxWait)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.buf
}

type hxFrame struct {
	typ, flags byte
	stream     uint32
	payload    []byte
	raw        []byte // header and payload
}

// hxFrames splits b into whole frames; a partial last frame is left out.
func hxFrames(b []byte) []hxFrame {
	var fs []hxFrame
	for len(b) >= 9 {
		n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		if len(b) < 9+n {
			break
		}
		fs = append(fs, hxFrame{typ: b[3], flags: b[4], stream: binary.BigEndian.Uint32(b[5:]) & 0x7fffffff,
			payload: b[9 : 9+n], raw: b[:9+n]})
		b = b[9+n:]
	}
	return fs
}

type hxBlock struct {
	stream    uint32
	endStream bool
	raw       []byte // the fragments joined, without padding and priority
	fields    []hpack.HeaderField
}

// hxBlocks joins the header blocks among frames (HEADERS then CONTINUATIONs) and, with dec
// (nil: not at all), decodes them in order; a block still waiting for CONTINUATIONs is left out.
func hxBlocks(frames []hxFrame, dec *hpack.Decoder) ([]hxBlock, error) {
	var out []hxBlock
	for i := 0; i < len(frames); i++ {
		f := frames[i]
		if f.typ == h2FrameContinuation {
			return out, fmt.Errorf("CONTINUATION of stream %d without HEADERS", f.stream)
		}
		if f.typ != h2FrameHeaders {
			continue
		}
		p, pad := f.payload, 0
		if f.flags&h2FlagPadded != 0 && len(p) > 0 {
			pad, p = int(p[0]), p[1:]
		}
		if f.flags&h2FlagPriority != 0 && len(p) >= 5 {
			p = p[5:]
		}
		if pad > len(p) {
			return out, fmt.Errorf("HEADERS of stream %d: padding over its length", f.stream)
		}
		b := hxBlock{stream: f.stream, endStream: f.flags&h2FlagEndStream != 0, raw: slices.Clone(p[:len(p)-pad])}
		for end := f.flags&h2FlagEndHeaders != 0; !end; {
			if i++; i == len(frames) {
				return out, nil
			}
			c := frames[i]
			if c.typ != h2FrameContinuation || c.stream != f.stream {
				return out, fmt.Errorf("header block of stream %d interrupted by type %d of stream %d", f.stream, c.typ, c.stream)
			}
			b.raw = append(b.raw, c.payload...)
			end = c.flags&h2FlagEndHeaders != 0
		}
		if dec != nil {
			fields, err := dec.DecodeFull(b.raw)
			if err != nil {
				return out, fmt.Errorf("header block %d (stream %d): %w", len(out), f.stream, err)
			}
			b.fields = fields
		}
		out = append(out, b)
	}
	return out, nil
}

// hxServerView parses what reached the kube-apiserver: the preface, then frames, header blocks
// decoded by a decoder whose table starts at table bytes.
func hxServerView(b []byte, table uint32) ([]hxFrame, []hxBlock, error) {
	if len(b) < len(h2Preface) {
		if !strings.HasPrefix(h2Preface, string(b)) {
			return nil, nil, fmt.Errorf("%q is not the connection preface", b)
		}
		return nil, nil, nil
	}
	if string(b[:len(h2Preface)]) != h2Preface {
		return nil, nil, fmt.Errorf("%q is not the connection preface", b[:len(h2Preface)])
	}
	frames := hxFrames(b[len(h2Preface):])
	for _, f := range frames {
		if (f.typ == h2FrameHeaders || f.typ == h2FrameContinuation) && len(f.payload) > h2OutFrame {
			// The agent's own frames: SETTINGS_MAX_FRAME_SIZE is 16384 until the server says more.
			return nil, nil, fmt.Errorf("a header frame of %d bytes", len(f.payload))
		}
	}
	blocks, err := hxBlocks(frames, hpack.NewDecoder(table, nil))
	return frames, blocks, err
}

// hxRelay is one relayed connection under test.
type hxRelay struct {
	t                  *testing.T
	r                  *h2Relay
	client, server     net.Conn      // the test's ends of the stream and of the kube-apiserver connection
	atServer, atClient *hxRecorder   // what reached them (atServer nil when a real server serves)
	fr                 *http2.Framer // writes the client's frames
	enc                *hpack.Encoder
	encBuf             bytes.Buffer
	end                chan error // clientToServer's error, once the relay closed both ends
	tokenCalls         atomic.Int32
	clientSkip         int // the server's first SETTINGS at the client, written by the harness
	result             error
	ended              bool
}

// hxStart relays a connection of the given kind (AuthCert or AuthToken) whose token function
// counts its calls and returns hxToken.
func hxStart(t *testing.T, auth string) *hxRelay {
	return hxStartWith(t, auth, nil, nil)
}

// hxStartWith: token nil is hxStart's; serve, when set, serves the kube-apiserver's end instead
// of a recorder.
func hxStartWith(t *testing.T, auth string, token func() (string, error), serve func(net.Conn)) *hxRelay {
	t.Helper()
	c1, c2 := net.Pipe()
	s1, s2 := net.Pipe()
	h := &hxRelay{t: t, client: c2, server: s2, end: make(chan error, 1)}
	if token == nil {
		token = func() (string, error) { h.tokenCalls.Add(1); return hxToken, nil }
	}
	h.r = newH2Relay(auth, token, c1, s1, c1)
	h.r.conns = [2]net.Conn{c1, s1}
	h.atClient = hxRecord(c2)
	if serve != nil {
		go serve(s2)
	} else {
		h.atServer = hxRecord(s2)
	}
	h.fr = http2.NewFramer(c2, nil)
	h.fr.AllowIllegalWrites = true
	h.enc = hpack.NewEncoder(&h.encBuf)
	go func() {
		sdone := make(chan error, 1)
		go func() { sdone <- h.r.serverToClient() }()
		err := h.r.clientToServer(func() {})
		h.r.close() // as serveKubeRelay does
		<-sdone
		h.end <- err
	}()
	if serve == nil {
		// A server's first frame is its SETTINGS; the agent's own frames wait for it.
		if _, err := s2.Write(appendFrameHeader(nil, 0, h2FrameSettings, 0, 0)); err != nil {
			t.Fatal(err)
		}
		h.clientSkip = 9
		h.atClient.wait(t, "the server's SETTINGS at the client", func(b []byte) bool { return len(b) >= h.clientSkip })
	}
	t.Cleanup(func() {
		_ = c2.Close()
		_ = s2.Close()
		if !h.ended {
			select {
			case <-h.end:
			case <-time.After(hxWait):
				t.Errorf("the relay did not end within %v of its pipes closing", hxWait)
			}
		}
	})
	return h
}

// wait returns the relay's error once it has ended on its own; an error that shows the agent's
// token fails the test.
func (h *hxRelay) wait() error {
	h.t.Helper()
	if !h.ended {
		select {
		case h.result = <-h.end:
			h.ended = true
		case <-time.After(hxWait):
			h.t.Fatalf("the relay did not end within %v", hxWait)
		}
	}
	if h.result != nil && strings.Contains(h.result.Error(), hxToken) {
		h.t.Fatalf("the relay's error shows the agent's token: %v", h.result)
	}
	return h.result
}

// wantRelayErr waits for the relay's end and requires an error wrapping ErrH2Relay.
func (h *hxRelay) wantRelayErr() error {
	h.t.Helper()
	err := h.wait()
	if !errors.Is(err, ErrH2Relay) {
		h.t.Fatalf("the relay ended with %v, want an error wrapping ErrH2Relay", err)
	}
	return err
}

func (h *hxRelay) must(err error) {
	h.t.Helper()
	if err != nil {
		h.t.Fatalf("client write: %v", err)
	}
}

// preface writes the connection preface and an empty SETTINGS frame.
func (h *hxRelay) preface() {
	h.t.Helper()
	_, err := io.WriteString(h.client, h2Preface)
	h.must(err)
	h.must(h.fr.WriteSettings())
}

// block encodes fields with the client's encoder (the connection's one).
func (h *hxRelay) block(fields ...hpack.HeaderField) []byte {
	h.encBuf.Reset()
	for _, f := range fields {
		if err := h.enc.WriteField(f); err != nil {
			h.t.Fatal(err)
		}
	}
	return slices.Clone(h.encBuf.Bytes())
}

// headers sends a request's (or trailers') header block in one HEADERS frame.
func (h *hxRelay) headers(stream uint32, endStream bool, fields ...hpack.HeaderField) {
	h.t.Helper()
	h.must(h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: h.block(fields...),
		EndStream: endStream, EndHeaders: true}))
}

// serverView waits until what reached the kube-apiserver holds n header blocks (decoded with a
// table of 4096), and returns its frames and blocks.
func (h *hxRelay) serverView(n int) ([]hxFrame, []hxBlock) {
	h.t.Helper()
	b := h.atServer.wait(h.t, fmt.Sprintf("%d header blocks at the kube-apiserver", n), func(b []byte) bool {
		_, blocks, err := hxServerView(b, 4096)
		return err != nil || len(blocks) >= n
	})
	frames, blocks, err := hxServerView(b, 4096)
	if err != nil {
		h.t.Fatalf("at the kube-apiserver: %v", err)
	}
	return frames, blocks
}

// serverEnd returns everything that reached the kube-apiserver once the relay has closed it.
func (h *hxRelay) serverEnd() ([]byte, []hxFrame, []hxBlock) {
	h.t.Helper()
	b := h.atServer.all(h.t)
	frames, blocks, err := hxServerView(b, 4096)
	if err != nil {
		h.t.Fatalf("at the kube-apiserver: %v", err)
	}
	return b, frames, blocks
}

// noHeadersAtServer: after the relay ended, nothing of stream bad or above reached the
// kube-apiserver (0: no header block at all), and what did reach it parses.
func (h *hxRelay) noHeadersAtServer(bad uint32) {
	h.t.Helper()
	_, frames, _ := h.serverEnd()
	for _, f := range frames {
		header := f.typ == h2FrameHeaders || f.typ == h2FrameContinuation || f.typ == h2FramePushPromise
		if (bad == 0 && header) || (bad != 0 && f.stream >= bad) {
			h.t.Fatalf("a frame of type %d on stream %d reached the kube-apiserver", f.typ, f.stream)
		}
	}
}

// clientView waits until what reached the client satisfies cond (its frames and header blocks,
// decoded in order by one decoder) and returns them.
func (h *hxRelay) clientView(what string, cond func([]hxFrame, []hxBlock) bool) ([]hxFrame, []hxBlock) {
	h.t.Helper()
	parse := func(b []byte) ([]hxFrame, []hxBlock, error) {
		frames := hxFrames(b[h.clientSkip:])
		blocks, err := hxBlocks(frames, hpack.NewDecoder(4096, nil))
		return frames, blocks, err
	}
	b := h.atClient.wait(h.t, what, func(b []byte) bool {
		frames, blocks, err := parse(b)
		return err != nil || cond(frames, blocks)
	})
	frames, blocks, err := parse(b)
	if err != nil {
		h.t.Fatalf("at the client: %v", err)
	}
	return frames, blocks
}

func hxReq(method, path string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: method}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "kube.example:6443"}, {Name: ":path", Value: path},
		{Name: "accept", Value: "application/json, */*"}, {Name: "user-agent", Value: "kubectl/v1.30.2"},
	}, extra...)
}

func hxAuth(v string) hpack.HeaderField { return hpack.HeaderField{Name: "authorization", Value: v} }

// hxAgentAuth is the Authorization the agent adds on a cert stream.
var hxAgentAuth = hpack.HeaderField{Name: "authorization", Value: "Bearer " + hxToken, Sensitive: true}

// hxOpensWithoutCredentials returns the first header block that the kube-apiserver takes as a new
// request (a stream above every one it saw) and that carries no Authorization of its own, if any.
func hxOpensWithoutCredentials(blocks []hxBlock) (hxBlock, bool) {
	var last uint32
	for _, b := range blocks {
		if b.stream <= last {
			continue // trailers, or a stream error at the server
		}
		last = b.stream
		auth := ""
		for _, f := range b.fields {
			if f.Name == "authorization" {
				auth = f.Value
				break
			}
		}
		if auth == "" {
			return b, true
		}
	}
	return hxBlock{}, false
}

// hxAppendInt appends an HPACK integer (RFC 7541 section 5.1) with an n-bit prefix under mask.
func hxAppendInt(p []byte, mask byte, n uint, v uint64) []byte {
	k := uint64(1)<<n - 1
	if v < k {
		return append(p, mask|byte(v))
	}
	p = append(p, mask|byte(k))
	for v -= k; v >= 128; v >>= 7 {
		p = append(p, byte(v&0x7f)|0x80)
	}
	return append(p, byte(v))
}

// hxLiteral is a literal field with a literal name, without indexing, no Huffman.
func hxLiteral(p []byte, name, value string) []byte {
	p = append(p, 0x00)
	p = hxAppendInt(p, 0, 7, uint64(len(name)))
	p = append(p, name...)
	p = hxAppendInt(p, 0, 7, uint64(len(value)))
	return append(p, value...)
}

// ---------------------------------------------------------------------------------------------
// 1. The connection preface.

func TestH2RelayHostilePreface(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(h *hxRelay)
	}{
		{"HTTP/1.1 request line", func(h *hxRelay) {
			_, _ = io.WriteString(h.client, "GET /api/v1/secrets HTTP/1.1\r\nHost: kube\r\n\r\n")
		}},
		{"preface with a wrong last byte", func(h *hxRelay) {
			_, _ = io.WriteString(h.client, h2Preface[:len(h2Preface)-1]+"x")
			_ = h.fr.WriteSettings()
		}},
		{"short preface then EOF", func(h *hxRelay) {
			_, _ = io.WriteString(h.client, h2Preface[:16])
			_ = h.client.Close()
		}},
		{"EOF at once", func(h *hxRelay) { _ = h.client.Close() }},
		{"preface deadline", func(h *hxRelay) {
			// serveKubeRelay's read deadline on the stream, expired: a timeout is the client's fault.
			_ = h.r.conns[0].SetReadDeadline(time.Unix(1, 0))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hxStart(t, AuthToken)
			tc.send(h)
			h.wantRelayErr()
			if b, _, _ := h.serverEnd(); len(b) != 0 {
				t.Fatalf("%q reached the kube-apiserver", b)
			}
		})
	}
}

// ---------------------------------------------------------------------------------------------
// 2. Header block framing.

func TestH2RelayHostileHeaderSequence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		send  func(h *hxRelay)
		ioErr bool // the relay ends with the client's EOF, not ErrH2Relay
	}{
		{"CONTINUATION without HEADERS", func(h *hxRelay) {
			_ = h.fr.WriteContinuation(3, true, h.block(hxReq("GET", "/api")...))
		}, false},
		{"CONTINUATION after a complete block", func(h *hxRelay) {
			_ = h.fr.WriteContinuation(1, true, h.block(hxAuth("Bearer smuggled")))
		}, false},
		{"HEADERS without END_HEADERS, then DATA", func(h *hxRelay) {
			blk := h.block(hxReq("GET", "/api")...)
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk[:5]})
			_ = h.fr.WriteData(3, true, blk[5:]) // the rest of the block, as a DATA frame
		}, false},
		{"HEADERS without END_HEADERS, then CONTINUATION of another stream", func(h *hxRelay) {
			blk := h.block(hxReq("GET", "/api")...)
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk[:5]})
			_ = h.fr.WriteContinuation(5, true, blk[5:])
		}, false},
		{"HEADERS without END_HEADERS, then HEADERS", func(h *hxRelay) {
			blk := h.block(hxReq("GET", "/api")...)
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk[:5]})
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk[5:], EndHeaders: true})
		}, false},
		{"HEADERS without END_HEADERS, then EOF", func(h *hxRelay) {
			blk := h.block(hxReq("GET", "/api")...)
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk})
			_ = h.client.Close()
		}, true},
		{"HEADERS cut short, then EOF", func(h *hxRelay) {
			_, _ = h.client.Write([]byte{0, 0, 100, h2FrameHeaders, h2FlagEndHeaders, 0, 0, 0, 3, 0x82})
			_ = h.client.Close()
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hxStart(t, AuthCert)
			h.preface()
			h.headers(1, true, hxReq("GET", "/version")...) // a good request first: it goes through
			h.serverView(1)
			tc.send(h)
			if tc.ioErr {
				if err := h.wait(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("the relay ended with %v, want the client's EOF", err)
				}
			} else {
				h.wantRelayErr()
			}
			_, frames, blocks := h.serverEnd()
			if len(blocks) != 1 || blocks[0].stream != 1 {
				t.Fatalf("header blocks at the kube-apiserver: %+v, want stream 1's only", blocks)
			}
			for _, f := range frames {
				if f.stream > 1 {
					t.Fatalf("a frame of type %d on stream %d reached the kube-apiserver", f.typ, f.stream)
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------------------------
// 3. Header block size.

// hxFiller is n bytes of HPACK that decode to nothing: dynamic table size updates to 0, each
// allowed at the start of a block while the table is empty.
func hxFiller(n int) []byte { return bytes.Repeat([]byte{0x20}, n) }

func TestH2RelayHostileBlockSize(t *testing.T) {
	const frag = 16384
	// A block of filler and a small request: the decoded list is small, so only the block cap
	// can refuse it.
	request := func(h *hxRelay, size int) []byte {
		tail := h.block(hxReq("GET", "/api/v1/pods")...)
		return append(hxFiller(size-len(tail)), tail...)
	}
	split := func(h *hxRelay, stream uint32, blk []byte) error {
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: blk[:frag], EndStream: true}); err != nil {
			return err
		}
		for blk = blk[frag:]; len(blk) > 0; {
			n := min(len(blk), frag)
			if err := h.fr.WriteContinuation(stream, n == len(blk), blk[:n]); err != nil {
				return err
			}
			blk = blk[n:]
		}
		return nil
	}
	t.Run("over 1 MiB in CONTINUATIONs", func(t *testing.T) {
		h := hxStart(t, AuthCert)
		h.preface()
		_ = split(h, 1, request(h, h2MaxHeaderBlock+1))
		h.wantRelayErr()
		h.noHeadersAtServer(1)
	})
	t.Run("one HEADERS over 1 MiB", func(t *testing.T) {
		h := hxStart(t, AuthCert)
		h.preface()
		_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: request(h, h2MaxHeaderBlock+1), EndStream: true, EndHeaders: true})
		h.wantRelayErr()
		h.noHeadersAtServer(1)
	})
	t.Run("a frame header claiming 16 MiB", func(t *testing.T) {
		h := hxStart(t, AuthCert)
		h.preface()
		_, _ = h.client.Write([]byte{0xff, 0xff, 0xff, h2FrameHeaders, h2FlagEndHeaders, 0, 0, 0, 1})
		h.wantRelayErr()
		h.noHeadersAtServer(1)
	})
	t.Run("a large block leaves in frames of 16384", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		h.preface()
		want := hxReq("GET", "/api/v1/pods", hpack.HeaderField{Name: "x-large", Value: strings.Repeat("l", 100<<10)}, hxAuth("Bearer user"))
		blk := h.block(want...)
		h.must(split(h, 1, blk))
		_, blocks := h.serverView(1) // hxServerView checks the frames' size
		if !slices.Equal(blocks[0].fields, want) {
			t.Fatalf("at the kube-apiserver: %d fields, want %v", len(blocks[0].fields), len(want))
		}
	})
	t.Run("exactly 1 MiB goes through", func(t *testing.T) {
		h := hxStart(t, AuthCert)
		h.preface()
		h.must(split(h, 1, request(h, h2MaxHeaderBlock)))
		_, blocks := h.serverView(1)
		if want := append(hxReq("GET", "/api/v1/pods"), hxAgentAuth); !slices.Equal(blocks[0].fields, want) {
			t.Fatalf("at the kube-apiserver: %v, want %v", blocks[0].fields, want)
		}
	})
}

// ---------------------------------------------------------------------------------------------
// 4. HPACK bomb.

func TestH2RelayHostileHPACKBomb(t *testing.T) {
	// One field of 4064 bytes (its table size is 4096 with the 32 of overhead) fills the
	// dynamic table; then every one-byte reference to it (index 62) decodes to 4 KiB.
	big := hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4096-32-len("x-bomb"))}
	refs := func(n int) []byte { return bytes.Repeat([]byte{0x80 | 62}, n) }
	start := func(t *testing.T) *hxRelay {
		h := hxStart(t, AuthCert)
		h.preface()
		h.headers(1, true, append(hxReq("GET", "/api"), big)...) // 4 KiB: a request like any other
		if _, blocks := h.serverView(1); len(blocks[0].fields) != 8 {
			t.Fatalf("the first request: %d fields at the kube-apiserver", len(blocks[0].fields))
		}
		return h
	}
	t.Run("list just over 1 MiB", func(t *testing.T) {
		h := start(t)
		n := h2MaxHeaderList/(len(big.Name)+len(big.Value)+32) + 1
		_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: append(refs(n), h.block(hxReq("GET", "/api")...)...),
			EndStream: true, EndHeaders: true})
		h.wantRelayErr()
		h.noHeadersAtServer(3)
	})
	t.Run("a million references: bounded memory", func(t *testing.T) {
		h := start(t)
		// 1 MiB of references is 4 GiB of header list. The relay may hold the block and the
		// first MiB of fields, not the rest.
		blk := append(refs(h2MaxHeaderBlock-100), h.block(hxReq("GET", "/api")...)...)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk, EndStream: true, EndHeaders: true})
		h.wantRelayErr()
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
			t.Fatalf("the relay allocated %d MiB for a 1 MiB block", got>>20)
		}
		h.noHeadersAtServer(3)
	})
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed HPACK.

func TestH2RelayHostileHPACK(t *testing.T) {
	for _, tc := range []struct {
		name  string
		block []byte
		want  error // the hpack error it must be, if one in particular
	}{
		{"truncated integer", append(hxLiteral(nil, ":method", "GET"), 0x7f, 0xff), nil},
		{"truncated string", append(hxLiteral(nil, ":method", "GET"), 0x00, 0x05, 'x', '-'), nil},
		{"integer overflow", append([]byte{0xff}, bytes.Repeat([]byte{0xff}, 12)...), nil},
		{"index 0", []byte{0x80}, nil},
		{"index past the tables", hxAppendInt(hxLiteral(nil, ":method", "GET"), 0x80, 7, 62), nil},
		{"literal with a name index past the tables", hxLiteral(hxAppendInt(nil, 0x40, 6, 70), "", "x")[1:], nil},
		{"table size update above 4096", hxAppendInt(nil, 0x20, 5, 4097), nil},
		{"table size update after a field", hxAppendInt(append([]byte{0x40}, hxLiteral(nil, ":method", "GET")[1:]...), 0x20, 5, 0), nil},
		{"string over the list cap", hxAppendInt([]byte{0x00, 0x01, 'x'}, 0, 7, h2MaxHeaderList+1), hpack.ErrStringLength},
		{"invalid Huffman", []byte{0x00, 0x81, 0xff, 0x81, 0xff}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hxStart(t, AuthCert)
			h.preface()
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: tc.block, EndStream: true, EndHeaders: true})
			if err := h.wantRelayErr(); tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("the relay ended with %v, want %v", err, tc.want)
			}
			h.noHeadersAtServer(1)
			if h.tokenCalls.Load() != 0 {
				t.Fatal("the token was read for a malformed block")
			}
		})
	}
}

// ---------------------------------------------------------------------------------------------
// 6. Frame flags and types.

func TestH2RelayHostileFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(h *hxRelay)
	}{
		{"PADDED with a pad length over the frame", func(h *hxRelay) {
			blk := h.block(hxReq("GET", "/api")...)
			_ = h.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPadded, 1, append([]byte{byte(len(blk) + 1)}, blk...))
		}},
		{"PADDED with no pad length", func(h *hxRelay) {
			_ = h.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPadded, 1, nil)
		}},
		{"PADDED and PRIORITY, padding over what the priority leaves", func(h *hxRelay) {
			_ = h.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPadded|http2.FlagHeadersPriority, 1,
				[]byte{3, 0, 0, 0, 0, 16, 0x82, 0x84})
		}},
		{"PRIORITY with a 3-byte payload", func(h *hxRelay) {
			_ = h.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPriority, 1, []byte{0, 0, 0})
		}},
		{"HEADERS on stream 0", func(h *hxRelay) {
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 0, BlockFragment: h.block(hxReq("GET", "/api")...), EndStream: true, EndHeaders: true})
		}},
		{"HEADERS on stream 0 with only the reserved bit", func(h *hxRelay) {
			_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1 << 31, BlockFragment: h.block(hxReq("GET", "/api")...), EndStream: true, EndHeaders: true})
		}},
		{"PUSH_PROMISE", func(h *hxRelay) {
			_ = h.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: h.block(hxReq("GET", "/api")...), EndHeaders: true})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hxStart(t, AuthCert)
			h.preface()
			tc.send(h)
			h.wantRelayErr()
			h.noHeadersAtServer(1)
		})
	}
	t.Run("padding and priority are removed", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		h.preface()
		want := hxReq("GET", "/api", hxAuth("Bearer user"))
		h.must(h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h.block(want...), EndStream: true, EndHeaders: true,
			PadLength: 200, Priority: http2.PriorityParam{StreamDep: 0, Weight: 200}}))
		_, blocks := h.serverView(1)
		if !slices.Equal(blocks[0].fields, want) {
			t.Fatalf("at the kube-apiserver: %v, want %v", blocks[0].fields, want)
		}
	})
}

// ---------------------------------------------------------------------------------------------
// 7. Token streams: requests without credentials are answered by the agent.

// hxRefusal checks that frames hold the agent's 401 for stream, and RST_STREAM(NO_ERROR) after
// it exactly when reset.
func hxRefusal(t *testing.T, frames []hxFrame, blocks []hxBlock, stream uint32, reset bool) {
	t.Helper()
	var blk *hxBlock
	for i := range blocks {
		if blocks[i].stream == stream {
			blk = &blocks[i]
		}
	}
	if blk == nil || !blk.endStream {
		t.Fatalf("no HEADERS with END_STREAM for stream %d at the client: %+v", stream, blocks)
	}
	status := ""
	for _, f := range blk.fields {
		if !f.Sensitive {
			t.Fatalf("the agent's 401 has an indexable field %v: it would change the client's table", f)
		}
		if f.Name == ":status" {
			status = f.Value
		}
	}
	if status != "401" {
		t.Fatalf("stream %d answered %q, want 401", stream, status)
	}
	rst := 0
	for _, f := range frames {
		if f.typ == h2FrameRSTStream && f.stream == stream {
			if binary.BigEndian.Uint32(f.payload) != 0 {
				t.Fatalf("RST_STREAM(%d) of stream %d, want NO_ERROR", binary.BigEndian.Uint32(f.payload), stream)
			}
			rst++
		}
	}
	if want := map[bool]int{false: 0, true: 1}[reset]; rst != want {
		t.Fatalf("%d RST_STREAM for stream %d, want %d", rst, stream, want)
	}
}

func TestH2RelayHostileTokenStream(t *testing.T) {
	t.Run("GET without credentials", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		h.preface()
		h.headers(1, true, hxReq("GET", "/api/v1/secrets")...)
		frames, blocks := h.clientView("the 401", func(_ []hxFrame, b []hxBlock) bool { return len(b) >= 1 })
		hxRefusal(t, frames, blocks, 1, false)
		h.headers(3, true, hxReq("GET", "/api/v1/secrets", hxAuth(""))...) // empty is none
		frames, blocks = h.clientView("the second 401", func(_ []hxFrame, b []hxBlock) bool { return len(b) >= 2 })
		hxRefusal(t, frames, blocks, 3, false)
		// The kube-apiserver reads the first one (Header.Get): empty, whatever follows.
		h.headers(7, true, hxReq("GET", "/api/v1/secrets", hxAuth(""), hxAuth("Bearer second"))...)
		frames, blocks = h.clientView("the third 401", func(_ []hxFrame, b []hxBlock) bool { return len(b) >= 3 })
		hxRefusal(t, frames, blocks, 7, false)
		// The next request with credentials goes through: the only one the server saw.
		want := hxReq("GET", "/api/v1/secrets", hxAuth("Bearer user-token"))
		h.headers(9, true, want...)
		frames, sblocks := h.serverView(1)
		if len(sblocks) != 1 || sblocks[0].stream != 9 || !slices.Equal(sblocks[0].fields, want) {
			t.Fatalf("at the kube-apiserver: %+v, want stream 9 with %v", sblocks, want)
		}
		for _, f := range frames {
			if f.stream != 0 && f.stream != 9 {
				t.Fatalf("a frame of type %d of stream %d reached the kube-apiserver", f.typ, f.stream)
			}
		}
		if h.tokenCalls.Load() != 0 {
			t.Fatal("a token stream read the agent's token")
		}
	})
	t.Run("POST without credentials: body dropped, credit given back", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		h.preface()
		h.headers(1, false, hxReq("POST", "/api/v1/namespaces/default/configmaps", hpack.HeaderField{Name: "content-type", Value: "application/json"})...)
		frames, blocks := h.clientView("the 401 and RST_STREAM", func(f []hxFrame, _ []hxBlock) bool { return len(f) >= 2 })
		hxRefusal(t, frames, blocks, 1, true)
		// The client's body was on its way: every DATA frame is dropped, its length (padding
		// included) given back on stream 0.
		h.must(h.fr.WriteData(1, false, bytes.Repeat([]byte("d"), 1000)))
		h.must(h.fr.WriteDataPadded(1, false, bytes.Repeat([]byte("e"), 500), make([]byte, 20)))
		h.must(h.fr.WriteData(1, false, nil)) // no credit to give back
		h.must(h.fr.WriteData(1, false, bytes.Repeat([]byte("f"), 16384)))
		h.must(h.fr.WriteWindowUpdate(1, 100))
		h.must(h.fr.WritePriority(1, http2.PriorityParam{Weight: 3}))
		h.headers(1, true, hpack.HeaderField{Name: "x-checksum", Value: "abc"}) // trailers: dropped
		want := []uint32{1000, 521, 16384}
		frames, _ = h.clientView("the WINDOW_UPDATEs", func(f []hxFrame, _ []hxBlock) bool { return len(f) >= 2+len(want) })
		for i, f := range frames[2 : 2+len(want)] {
			if f.typ != h2FrameWindowUpdate || f.stream != 0 || f.flags != 0 || len(f.payload) != 4 || binary.BigEndian.Uint32(f.payload) != want[i] {
				t.Fatalf("frame %d at the client: type %d stream %d payload %x, want WINDOW_UPDATE(0, %d)", i+2, f.typ, f.stream, f.payload, want[i])
			}
		}
		// The stream has ended for the relay: the next request (same fields, now with
		// credentials) reaches the server as sent, and its body too.
		reqFields := hxReq("POST", "/api/v1/namespaces/default/configmaps", hpack.HeaderField{Name: "content-type", Value: "application/json"}, hxAuth("Bearer user-token"))
		h.headers(3, false, reqFields...)
		h.must(h.fr.WriteData(3, true, []byte(`{"kind":"ConfigMap"}`)))
		sframes := h.atServer.wait(t, "stream 3's DATA", func(b []byte) bool {
			fs, _, _ := hxServerView(b, 4096)
			return len(fs) > 0 && fs[len(fs)-1].typ == h2FrameData
		})
		fs, sblocks, err := hxServerView(sframes, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if len(sblocks) != 1 || sblocks[0].stream != 3 || !slices.Equal(sblocks[0].fields, reqFields) {
			t.Fatalf("at the kube-apiserver: %+v, want stream 3 with %v", sblocks, reqFields)
		}
		for _, f := range fs {
			if f.stream == 1 {
				t.Fatalf("a frame of type %d of the refused stream reached the kube-apiserver", f.typ)
			}
		}
		if frames, _ := h.clientView("", func([]hxFrame, []hxBlock) bool { return true }); len(frames) != 2+len(want) {
			t.Fatalf("%d frames at the client, want %d: the trailers or the stream's WINDOW_UPDATE were answered", len(frames), 2+len(want))
		}
	})
	t.Run("over 1024 unfinished refused requests", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		h.preface()
		stream := uint32(1)
		for range h2MaxRefused {
			h.headers(stream, false, hxReq("POST", "/api/v1/namespaces")...)
			stream += 2
		}
		h.clientView("1024 refusals", func(f []hxFrame, _ []hxBlock) bool { return len(f) >= 2*h2MaxRefused })
		// A request that ends (RST_STREAM, DATA with END_STREAM) makes room for one more.
		h.must(h.fr.WriteRSTStream(1, http2.ErrCodeCancel))
		h.headers(stream, false, hxReq("POST", "/api/v1/namespaces")...)
		h.clientView("the 1025th refusal", func(f []hxFrame, _ []hxBlock) bool { return len(f) >= 2*h2MaxRefused+2 })
		h.must(h.fr.WriteData(3, true, []byte("x")))
		h.headers(stream+2, false, hxReq("POST", "/api/v1/namespaces")...)
		h.clientView("the 1026th refusal", func(f []hxFrame, _ []hxBlock) bool { return len(f) >= 2*h2MaxRefused+5 })
		_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream + 4, BlockFragment: h.block(hxReq("POST", "/api/v1/namespaces")...), EndHeaders: true})
		h.wantRelayErr()
		h.noHeadersAtServer(0)
	})
}

// ---------------------------------------------------------------------------------------------
// 8. Cert streams: the agent's token for requests without one.

func TestH2RelayHostileCertStream(t *testing.T) {
	t.Run("without credentials: the agent's token", func(t *testing.T) {
		h := hxStart(t, AuthCert)
		h.preface()
		sent := hxReq("GET", "/api/v1/nodes")
		h.headers(1, true, sent...)
		_, blocks := h.serverView(1)
		if want := append(slices.Clone(sent), hxAgentAuth); !slices.Equal(blocks[0].fields, want) {
			t.Fatalf("at the kube-apiserver: %v, want %v", blocks[0].fields, want)
		}
		if n := h.tokenCalls.Load(); n != 1 {
			t.Fatalf("the token function ran %d times, want 1", n)
		}
	})
	t.Run("with its own credentials: kept, no token read", func(t *testing.T) {
		h := hxStartWith(t, AuthCert, func() (string, error) { return "", errors.New("the token is not needed") }, nil)
		h.preface()
		sent := hxReq("GET", "/api/v1/nodes", hxAuth("Bearer the-users-own"))
		h.headers(1, true, sent...)
		sent2 := hxReq("GET", "/api/v1/nodes", hpack.HeaderField{Name: "authorization", Value: "Basic dXNlcjpwdw==", Sensitive: true})
		h.headers(3, true, sent2...)
		_, blocks := h.serverView(2)
		if !slices.Equal(blocks[0].fields, sent) || !slices.Equal(blocks[1].fields, sent2) {
			t.Fatalf("at the kube-apiserver: %v and %v, want %v and %v", blocks[0].fields, blocks[1].fields, sent, sent2)
		}
	})
	t.Run("with an empty Authorization: the agent's token instead", func(t *testing.T) {
		// As on the request-by-request path (Header.Get == "", then Set): no second field, which
		// the kube-apiserver would read as the (empty) first one.
		h := hxStart(t, AuthCert)
		h.preface()
		h.headers(1, true, hxReq("GET", "/api/v1/nodes", hxAuth(""))...)
		_, blocks := h.serverView(1)
		if want := append(hxReq("GET", "/api/v1/nodes"), hxAgentAuth); !slices.Equal(blocks[0].fields, want) {
			t.Fatalf("at the kube-apiserver: %v, want %v", blocks[0].fields, want)
		}
	})
	t.Run("with an empty first Authorization: the agent's token instead of all", func(t *testing.T) {
		h := hxStart(t, AuthCert)
		h.preface()
		h.headers(1, true, hxReq("GET", "/api/v1/nodes", hxAuth(""), hxAuth("Bearer second"))...)
		_, blocks := h.serverView(1)
		if want := append(hxReq("GET", "/api/v1/nodes"), hxAgentAuth); !slices.Equal(blocks[0].fields, want) {
			t.Fatalf("at the kube-apiserver: %v, want %v", blocks[0].fields, want)
		}
	})
	t.Run("a failing token function", func(t *testing.T) {
		errTok := errors.New("token file: permission denied")
		h := hxStartWith(t, AuthCert, func() (string, error) { return hxToken, errTok }, nil)
		h.preface()
		h.headers(1, true, hxReq("GET", "/api/v1/nodes")...)
		if err := h.wait(); !errors.Is(err, errTok) {
			t.Fatalf("the relay ended with %v, want the token function's error", err)
		}
		h.noHeadersAtServer(1)
	})
}

// ---------------------------------------------------------------------------------------------
// 9. Trailers, stream reuse, HPACK state over many requests.

func TestH2RelayHostileTrailers(t *testing.T) {
	for _, auth := range []string{AuthCert, AuthToken} {
		t.Run(auth, func(t *testing.T) {
			h := hxStart(t, auth)
			h.preface()
			req := hxReq("POST", "/api/v1/namespaces/default/configmaps", hpack.HeaderField{Name: "te", Value: "trailers"})
			if auth == AuthToken {
				req = append(req, hxAuth("Bearer user"))
			}
			h.headers(1, false, req...)
			h.must(h.fr.WriteData(1, false, []byte("{}")))
			trailers := []hpack.HeaderField{{Name: "x-checksum", Value: "0123"}}
			h.headers(1, true, trailers...)
			_, blocks := h.serverView(2)
			if !blocks[1].endStream || blocks[1].stream != 1 || !slices.Equal(blocks[1].fields, trailers) {
				t.Fatalf("trailers at the kube-apiserver: %+v, want %v with END_STREAM", blocks[1], trailers)
			}
			if n := h.tokenCalls.Load(); auth == AuthCert && n != 1 {
				t.Fatalf("the token function ran %d times, want once (the request, not its trailers)", n)
			}
			if frames, _ := h.clientView("", func([]hxFrame, []hxBlock) bool { return true }); len(frames) != 0 {
				t.Fatalf("the agent answered %d frames", len(frames))
			}
		})
	}
}

// TestH2RelayHostileStreamReuse: on a token stream a HEADERS frame the kube-apiserver takes as
// a new request (its stream above every one it saw) must carry credentials, whatever streams
// the client used before for requests the agent refused.
func TestH2RelayHostileStreamReuse(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(h *hxRelay)
	}{
		{"a refused stream again", func(h *hxRelay) {
			h.headers(1, true, hxReq("GET", "/api/v1/secrets")...)
			h.headers(1, true, hxReq("GET", "/api/v1/secrets")...)
		}},
		{"a lower stream after a refused one", func(h *hxRelay) {
			h.headers(7, true, hxReq("GET", "/api/v1/secrets")...)
			h.headers(5, true, hxReq("GET", "/api/v1/secrets")...)
		}},
		{"a lower stream after a refused one, above a relayed one", func(h *hxRelay) {
			h.headers(1, true, hxReq("GET", "/version", hxAuth("Bearer user"))...)
			h.headers(7, true, hxReq("GET", "/api/v1/secrets")...)
			h.headers(5, true, hxReq("GET", "/api/v1/secrets")...)
		}},
		{"an unfinished refused stream, then trailers-looking HEADERS on it", func(h *hxRelay) {
			h.headers(3, false, hxReq("POST", "/api/v1/namespaces")...)
			h.must(h.fr.WriteRSTStream(3, http2.ErrCodeCancel))
			h.headers(3, true, hxReq("GET", "/api/v1/secrets")...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hxStart(t, AuthToken)
			h.preface()
			tc.send(h)
			// A request with credentials last: once it is at the server, all before it was relayed
			// or dropped.
			h.headers(101, true, hxReq("GET", "/healthz", hxAuth("Bearer user"))...)
			b := h.atServer.wait(t, "stream 101", func(b []byte) bool {
				_, blocks, err := hxServerView(b, 4096)
				return err != nil || (len(blocks) > 0 && blocks[len(blocks)-1].stream == 101)
			})
			_, blocks, err := hxServerView(b, 4096)
			if err != nil {
				t.Fatal(err)
			}
			if blk, ok := hxOpensWithoutCredentials(blocks); ok {
				t.Fatalf("stream %d reached the kube-apiserver as a new request without credentials: %v", blk.stream, blk.fields)
			}
		})
	}
}

// TestH2RelayHostileRefusedStreamFrames: frames a client may still send on a stream the agent
// refused (RST_STREAM when it cancels, WINDOW_UPDATE) never reach the kube-apiserver, for which
// that stream is idle: a frame other than HEADERS or PRIORITY on an idle stream is a connection
// error there (RFC 9113 section 5.1), which would end the client's other streams.
func TestH2RelayHostileRefusedStreamFrames(t *testing.T) {
	h := hxStart(t, AuthToken)
	h.preface()
	h.headers(1, true, hxReq("GET", "/api/v1/pods")...)
	h.must(h.fr.WriteRSTStream(1, http2.ErrCodeCancel)) // the client gave up before the 401 arrived
	h.must(h.fr.WriteWindowUpdate(1, 1000))
	h.must(h.fr.WriteWindowUpdate(2, 1000)) // a stream the server opened (a push): its to judge
	h.must(h.fr.WritePriority(5, http2.PriorityParam{Weight: 7}))
	h.headers(3, true, hxReq("GET", "/api/v1/pods", hxAuth("Bearer user"))...)
	frames, _ := h.serverView(1)
	var others []uint32
	for _, f := range frames {
		if f.stream == 1 {
			t.Fatalf("a frame of type %d of the refused stream reached the kube-apiserver", f.typ)
		}
		if f.stream != 0 && f.stream != 3 {
			others = append(others, f.stream)
		}
	}
	if !slices.Equal(others, []uint32{2, 5}) {
		t.Fatalf("frames of streams %v reached the kube-apiserver, want the WINDOW_UPDATE of 2 and the PRIORITY of 5", others)
	}
}

// TestH2RelayRealServerRefusedThenCancelled is the same with golang.org/x/net/http2's server, as
// the kube-apiserver runs it: the client's connection survives and its next request is served.
func TestH2RelayRealServerRefusedThenCancelled(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	h := hxStartWith(t, AuthToken, nil, func(c net.Conn) {
		(&http2.Server{}).ServeConn(c, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, r.URL.Path+" "+r.Header.Get("Authorization"))
			mu.Unlock()
			_, _ = io.WriteString(w, "ok")
		})})
	})
	h.preface()
	h.headers(1, true, hxReq("GET", "/api/v1/secrets")...)
	h.must(h.fr.WriteRSTStream(1, http2.ErrCodeCancel))
	h.headers(1, true, hxReq("GET", "/api/v1/secrets")...) // and the stream again, without credentials
	h.headers(3, true, hxReq("GET", "/api/v1/pods", hxAuth("Bearer user"))...)
	_, blocks := h.clientView("stream 3's answer or GOAWAY", func(f []hxFrame, b []hxBlock) bool {
		for _, fr := range f {
			if fr.typ == h2FrameGoAway {
				return true
			}
		}
		return len(b) > 0 && b[len(b)-1].stream == 3
	})
	if last := blocks[len(blocks)-1]; last.stream != 3 || last.fields[0] != (hpack.HeaderField{Name: ":status", Value: "200"}) {
		t.Fatalf("the kube-apiserver ended the connection instead of answering stream 3 (blocks %+v)", blocks)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, []string{"/api/v1/pods Bearer user"}) {
		t.Fatalf("the kube-apiserver served %q", seen)
	}
}

func TestH2RelayHostileHPACKState(t *testing.T) {
	paths := []string{"/api/v1/pods", "/api/v1/namespaces/default/configmaps", "/apis/apps/v1/deployments", "/version", "/api/v1/nodes?watch=true"}
	bigs := []string{strings.Repeat("a", 1500), strings.Repeat("b", 2500), strings.Repeat("c", 900)}
	for _, auth := range []string{AuthCert, AuthToken} {
		t.Run(auth, func(t *testing.T) {
			h := hxStart(t, auth)
			h.preface()
			var want [][]hpack.HeaderField
			for i := range 200 {
				fields := hxReq("GET", paths[i%len(paths)],
					hpack.HeaderField{Name: "x-request-id", Value: fmt.Sprintf("req-%d", i)}, // churns the table
					hpack.HeaderField{Name: "x-big", Value: bigs[i%len(bigs)]},               // evicts
					hpack.HeaderField{Name: "x-user", Value: fmt.Sprintf("u%d", i%7)})
				switch i % 3 {
				case 0: // no credentials: the agent's token, or its 401
				case 1:
					fields = append(fields, hxAuth(fmt.Sprintf("Bearer user-%d", i%4)))
				case 2:
					fields = append(fields, hpack.HeaderField{Name: "authorization", Value: "Bearer sensitive", Sensitive: true})
				}
				h.headers(uint32(2*i+1), true, fields...)
				switch {
				case i%3 != 0:
					want = append(want, fields)
				case auth == AuthCert:
					want = append(want, append(fields, hxAgentAuth))
				}
			}
			_, blocks := h.serverView(len(want))
			if len(blocks) != len(want) {
				t.Fatalf("%d requests at the kube-apiserver, want %d", len(blocks), len(want))
			}
			for i, b := range blocks {
				if !slices.Equal(b.fields, want[i]) {
					t.Fatalf("request %d (stream %d) at the kube-apiserver:\n%v\nwant\n%v", i, b.stream, b.fields, want[i])
				}
			}
			if auth == AuthToken {
				h.clientView("67 refusals", func(_ []hxFrame, b []hxBlock) bool { return len(b) >= 67 })
			}
		})
	}
}

// ---------------------------------------------------------------------------------------------
// 10. The server's direction.

func TestH2RelayHostileServerTableSize(t *testing.T) {
	h := hxStart(t, AuthCert)
	h.preface()
	custom := []hpack.HeaderField{{Name: "x-tenant", Value: "team-a"}, {Name: "x-trace", Value: "0af7651916cd43dd8448eb211c80319c"}}
	for s := uint32(1); s <= 3; s += 2 {
		h.headers(s, true, hxReq("GET", "/api", custom...)...)
	}
	h.serverView(2) // the relay's encoder has indexed these
	// The kube-apiserver allows no dynamic table any more.
	settings := []byte{0, 0, 6, h2FrameSettings, 0, 0, 0, 0, 0, 0, h2SettingHeaderTableSize, 0, 0, 0, 0}
	if _, err := h.server.Write(settings); err != nil {
		t.Fatal(err)
	}
	h.atClient.wait(t, "the SETTINGS at the client", func(b []byte) bool { return len(b) >= h.clientSkip+len(settings) })
	// A client that has read them says so at the start of its next block (RFC 7541 section 4.2).
	h.enc.SetMaxDynamicTableSizeLimit(0)
	for s := uint32(5); s <= 9; s += 2 {
		h.headers(s, true, hxReq("GET", "/api", custom...)...)
	}
	b := h.atServer.wait(t, "5 header blocks", func(b []byte) bool {
		_, blocks, _ := hxServerView(b, 4096)
		return len(blocks) >= 5
	})
	blocks, err := hxBlocks(hxFrames(b[len(h2Preface):]), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The kube-apiserver's decoder, past its SETTINGS: no update above 0, so no entries.
	dec := hpack.NewDecoder(4096, nil)
	want := append(hxReq("GET", "/api", custom...), hxAgentAuth)
	for i, blk := range blocks {
		if i == 2 {
			dec.SetAllowedMaxDynamicTableSize(0)
			if len(blk.raw) == 0 || blk.raw[0] != 0x20 {
				t.Fatalf("the first block after SETTINGS_HEADER_TABLE_SIZE 0 starts with %x, not a table size update to 0", blk.raw[:min(4, len(blk.raw))])
			}
		}
		fields, err := dec.DecodeFull(blk.raw)
		if err != nil {
			t.Fatalf("block %d at the kube-apiserver: %v", i, err)
		}
		if !slices.Equal(fields, want) {
			t.Fatalf("block %d at the kube-apiserver: %v, want %v", i, fields, want)
		}
	}
	// The agent's decoder allows the client no more either.
	_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 11, BlockFragment: append(hxAppendInt(nil, 0x20, 5, 4096), 0x82),
		EndStream: true, EndHeaders: true})
	h.wantRelayErr()
}

// hxChunks writes p to w in pieces of varying size, so that frames arrive split anyhow.
func hxChunks(w io.Writer, p []byte) error {
	for i := 0; len(p) > 0; i++ {
		n := min(len(p), []int{1, 7, 9, 100, 4096, 20000, 3}[i%7])
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// hxServerFrames is a kube-apiserver's side of a connection: every frame type, a 100 KiB answer.
func hxServerFrames() []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 250}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 4096},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	_ = fr.WriteSettingsAck()
	_ = fr.WriteWindowUpdate(0, 1<<24)
	_ = fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/json"}, {Name: "audit-id", Value: "b3c9"}} {
		_ = enc.WriteField(f)
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes()[:3], EndHeaders: false})
	_ = fr.WriteContinuation(1, true, hb.Bytes()[3:])
	body := make([]byte, 100<<10)
	for i := range body {
		body[i] = byte(i * 7)
	}
	for i := 0; len(body) > 0; i++ {
		n := min(len(body), 16384-300)
		if i%2 == 1 {
			_ = fr.WriteDataPadded(1, n == len(body), body[:n], make([]byte, 255))
		} else {
			_ = fr.WriteData(1, n == len(body), body[:n])
		}
		body = body[n:]
	}
	_ = fr.WriteRawFrame(0x0b, 0xff, 1, []byte("an extension frame")) // unknown types pass too
	_ = fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{0, 1, 0})  // malformed: the client's to judge
	_ = fr.WriteRSTStream(3, http2.ErrCodeRefusedStream)
	_ = fr.WriteGoAway(3, http2.ErrCodeNo, []byte("bye"))
	return buf.Bytes()
}

func TestH2RelayServerFramesUnchanged(t *testing.T) {
	h := hxStart(t, AuthCert)
	want := hxServerFrames()
	if err := hxChunks(h.server, want); err != nil {
		t.Fatal(err)
	}
	got := h.atClient.wait(t, "the server's frames", func(b []byte) bool { return len(b) >= h.clientSkip+len(want) })
	if got = got[h.clientSkip:]; !bytes.Equal(got, want) {
		t.Fatalf("the client got %d bytes that differ from the server's %d", len(got), len(want))
	}
}

// TestH2RelayServerFramesWithRefusals: the agent's own frames (401s, WINDOW_UPDATEs) go between
// the server's, never inside one.
func TestH2RelayServerFramesWithRefusals(t *testing.T) {
	h := hxStart(t, AuthToken)
	h.preface()
	want := hxServerFrames()
	sent := make(chan error, 1)
	go func() { sent <- hxChunks(h.server, bytes.Repeat(want, 4)) }()
	const refused = 40
	for i := range refused {
		h.headers(uint32(2*i+1), false, hxReq("POST", "/api/v1/namespaces")...)
		h.must(h.fr.WriteData(uint32(2*i+1), true, []byte("body")))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	var server []byte
	h.atClient.wait(t, "all frames", func(b []byte) bool {
		server = server[:0]
		agent := 0
		for _, f := range hxFrames(b[h.clientSkip:]) {
			switch {
			case f.typ == h2FrameWindowUpdate && f.stream == 0 && binary.BigEndian.Uint32(f.payload) == 4:
				agent++
			case f.typ == h2FrameHeaders && f.flags == h2FlagEndHeaders|h2FlagEndStream && f.stream%2 == 1 && f.stream < 2*refused:
				agent++
			case f.typ == h2FrameRSTStream && binary.BigEndian.Uint32(f.payload) == 0:
				agent++
			default:
				server = append(server, f.raw...)
			}
		}
		return agent == 3*refused && len(server) >= 4*len(want)
	})
	if !bytes.Equal(server, bytes.Repeat(want, 4)) {
		t.Fatalf("the server's frames at the client differ (%d bytes, want %d)", len(server), 4*len(want))
	}
}

// ---------------------------------------------------------------------------------------------
// 11. Slow: the preface not arriving (agentServer.serveKubeRelay, the stream's read deadline).

// hxDeadlineConn records its read deadlines.
type hxDeadlineConn struct {
	net.Conn
	mu        sync.Mutex
	deadlines []time.Time
}

func (c *hxDeadlineConn) SetReadDeadline(d time.Time) error {
	c.mu.Lock()
	c.deadlines = append(c.deadlines, d)
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(d)
}

func TestH2RelayHostileSlowPreface(t *testing.T) {
	serve := func(t *testing.T, headTimeout time.Duration) (client net.Conn, kube *hxRecorder, st *hxDeadlineConn, done chan struct{}) {
		s := newAgentServer(upstream{}, upstream{}, headTimeout, logr.Discard())
		t.Cleanup(s.cancel)
		k1, k2 := net.Pipe()
		s.relay = &KubeRelay{Dial: func(ctx context.Context) (net.Conn, error) { return k1, nil },
			Token: func() (string, error) { return hxToken, nil }}
		c1, c2 := net.Pipe()
		st = &hxDeadlineConn{Conn: c1}
		done = make(chan struct{})
		go func() {
			defer close(done)
			s.serveKubeRelay(st, bufio.NewReader(st), StreamHeader{Target: TargetKubernetesH2, Auth: AuthCert})
		}()
		t.Cleanup(func() { _ = c2.Close(); _ = k2.Close(); <-done })
		kube = hxRecord(k2)
		answer := make([]byte, len(answerOK)+1)
		if _, err := io.ReadFull(c2, answer); err != nil || string(answer) != answerOK+"\n" {
			t.Fatalf("answer %q, %v", answer, err)
		}
		return c2, kube, st, done
	}
	t.Run("no preface", func(t *testing.T) {
		client, kube, _, done := serve(t, 50*time.Millisecond)
		select {
		case <-done:
		case <-time.After(hxWait):
			t.Fatal("the relay still waits for a preface")
		}
		if b := kube.all(t); len(b) != 0 {
			t.Fatalf("%q reached the kube-apiserver", b)
		}
		if n, err := client.Read(make([]byte, 1)); err == nil {
			t.Fatalf("the stream still open (%d bytes)", n)
		}
	})
	t.Run("preface in time: the deadline is lifted", func(t *testing.T) {
		client, kube, st, _ := serve(t, time.Hour)
		if _, err := io.WriteString(client, h2Preface); err != nil {
			t.Fatal(err)
		}
		kube.wait(t, "the preface", func(b []byte) bool { return len(b) >= len(h2Preface) })
		st.mu.Lock()
		defer st.mu.Unlock()
		if len(st.deadlines) != 2 || st.deadlines[0].IsZero() || !st.deadlines[1].IsZero() {
			t.Fatalf("read deadlines on the stream: %v, want the preface's then none", st.deadlines)
		}
	})
}

// TestH2RelayRefusalBodyFlowControl: the 401's Status body is paid from the reserve withheld from
// the client's large connection-level grant (the server is told 64 KiB less), never from a small
// grant, and not sent when the client's stream window is too small for it.
func TestH2RelayRefusalBodyFlowControl(t *testing.T) {
	windowAtServer := func(h *hxRelay) []uint32 {
		b := h.atServer.wait(t, "a WINDOW_UPDATE at the kube-apiserver", func(b []byte) bool {
			frames, _, _ := hxServerView(b, 4096)
			for _, f := range frames {
				if f.typ == h2FrameWindowUpdate && f.stream == 0 {
					return true
				}
			}
			return false
		})
		frames, _, _ := hxServerView(b, 4096)
		var incs []uint32
		for _, f := range frames {
			if f.typ == h2FrameWindowUpdate && f.stream == 0 {
				incs = append(incs, binary.BigEndian.Uint32(f.payload))
			}
		}
		return incs
	}
	body := func(frames []hxFrame, stream uint32) []byte {
		for _, f := range frames {
			if f.typ == h2FrameData && f.stream == stream {
				return f.payload
			}
		}
		return nil
	}
	t.Run("a large grant pays for the body", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		h.preface()
		h.must(h.fr.WriteWindowUpdate(0, 1<<30))
		if got := windowAtServer(h); len(got) != 1 || got[0] != 1<<30-h2Reserve {
			t.Fatalf("the kube-apiserver was granted %v, want %d", got, 1<<30-h2Reserve)
		}
		h.headers(1, true, hxReq("GET", "/api/v1/secrets")...)
		frames, _ := h.clientView("the 401 and its body", func(f []hxFrame, _ []hxBlock) bool { return body(f, 1) != nil })
		b := body(frames, 1)
		if !bytes.Contains(b, []byte(`"reason":"Unauthorized"`)) || !bytes.Contains(b, []byte("client certificate")) {
			t.Fatalf("401 body %q", b)
		}
		if h.r.reserve != h2Reserve-len(b) {
			t.Fatalf("reserve %d after a %d-byte body, want %d", h.r.reserve, len(b), h2Reserve-len(b))
		}
	})
	t.Run("a small grant passes whole and pays for nothing", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		h.preface()
		h.must(h.fr.WriteWindowUpdate(0, 4096))
		if got := windowAtServer(h); len(got) != 1 || got[0] != 4096 {
			t.Fatalf("the kube-apiserver was granted %v, want 4096", got)
		}
		h.headers(1, true, hxReq("GET", "/api/v1/secrets")...)
		frames, blocks := h.clientView("the 401", func(_ []hxFrame, b []hxBlock) bool { return len(b) >= 1 })
		hxRefusal(t, frames, blocks, 1, false)
		if body(frames, 1) != nil {
			t.Fatal("a 401 body without a reserve to pay for it")
		}
	})
	t.Run("a stream window smaller than the body", func(t *testing.T) {
		h := hxStart(t, AuthToken)
		_, err := io.WriteString(h.client, h2Preface)
		h.must(err)
		h.must(h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 16}))
		h.must(h.fr.WriteWindowUpdate(0, 1<<30))
		windowAtServer(h)
		h.headers(1, true, hxReq("GET", "/api/v1/secrets")...)
		frames, blocks := h.clientView("the 401", func(_ []hxFrame, b []hxBlock) bool { return len(b) >= 1 })
		hxRefusal(t, frames, blocks, 1, false)
		if body(frames, 1) != nil {
			t.Fatal("a 401 body larger than the client's stream window")
		}
	})
}
