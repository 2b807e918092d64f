package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzH2Relay feeds the connection preface and arbitrary frames to the agent's HTTP/2 relay as
// the client's side of a kubernetes-h2 stream; the input's first byte picks the stream's kind
// (bit 0: cert, else token) and the kube-apiserver's SETTINGS_HEADER_TABLE_SIZE (bits 1-2: not
// said, 0, 256, 1 MiB). Invariants: no panic; the relay ends with an error wrapping ErrH2Relay or the
// client's EOF, never showing the agent's token; what reached the kube-apiserver is the preface
// and frames whose header blocks its decoder reads; every block it takes as a new request (a
// stream above all it saw) carries credentials, and a token stream never reads the agent's
// token. Seeds: below and testdata/fuzz/FuzzH2Relay.
func FuzzH2Relay(f *testing.F) {
	for _, s := range hxFuzzSeeds() {
		f.Add(s)
	}
	const token = "fuzz-agent-token-3vG8"
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		mode, in := in[0], in[1:]
		auth := AuthToken
		if mode&1 == 1 {
			auth = AuthCert
		}
		var fromServer bytes.Buffer // the server's SETTINGS, its first frame
		if ts := (mode >> 1) & 3; ts != 0 {
			p := appendFrameHeader(nil, 6, h2FrameSettings, 0, 0)
			p = binary.BigEndian.AppendUint16(p, h2SettingHeaderTableSize)
			fromServer.Write(binary.BigEndian.AppendUint32(p, []uint32{0, 0, 256, 1 << 20}[ts]))
		} else {
			fromServer.Write(appendFrameHeader(nil, 0, h2FrameSettings, 0, 0))
		}
		var toServer bytes.Buffer
		tokenCalls := 0
		r := newH2Relay(auth, func() (string, error) { tokenCalls++; return token, nil },
			bytes.NewReader(append([]byte(h2Preface), in...)), struct {
				io.Reader
				io.Writer
			}{&fromServer, &toServer}, io.Discard)
		if err := r.serverToClient(); !errors.Is(err, io.EOF) {
			t.Fatalf("the server's SETTINGS: %v", err)
		}
		err := r.clientToServer(func() {})
		if !errors.Is(err, ErrH2Relay) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("the relay ended with %v (%T)", err, err)
		}
		if strings.Contains(err.Error(), token) {
			t.Fatalf("the error shows the agent's token: %v", err)
		}
		if auth == AuthToken && tokenCalls != 0 {
			t.Fatal("a token stream read the agent's token")
		}
		_, blocks, verr := hxServerView(toServer.Bytes(), 4096)
		if verr != nil {
			t.Fatalf("at the kube-apiserver: %v", verr)
		}
		if b, ok := hxOpensWithoutCredentials(blocks); ok {
			t.Fatalf("stream %d reached the kube-apiserver as a new request without credentials: %v", b.stream, b.fields)
		}
	})
}

// hxFuzzSeeds are FuzzH2Relay's seeds: valid exchanges and each hostile case of
// relay_h2_hostile_test.go, as both kinds of stream.
func hxFuzzSeeds() [][]byte {
	type script func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte)
	req := hxReq("GET", "/api/v1/namespaces/default/pods")
	authReq := hxReq("GET", "/api/v1/namespaces/default/pods", hxAuth("Bearer user-token"))
	post := hxReq("POST", "/api/v1/namespaces/default/configmaps", hpack.HeaderField{Name: "content-type", Value: "application/json"})
	scripts := []script{
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // valid: requests, body, trailers, control frames
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk(authReq...), EndStream: true, EndHeaders: true})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk(append(post, hxAuth("Bearer u"))...), EndHeaders: true})
			_ = fr.WriteData(3, false, []byte(`{"kind":"ConfigMap"}`))
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk(hpack.HeaderField{Name: "x-sum", Value: "1"}), EndStream: true, EndHeaders: true})
			_ = fr.WritePing(false, [8]byte{1})
			_ = fr.WriteWindowUpdate(0, 1<<20)
			_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // without credentials, with a body
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk(post...), EndHeaders: true, PadLength: 3})
			_ = fr.WriteData(1, false, []byte("abc"))
			_ = fr.WriteDataPadded(1, false, []byte("abc"), []byte{0, 0})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk(hpack.HeaderField{Name: "x-sum", Value: "1"}), EndStream: true, EndHeaders: true})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk(req...), EndStream: true, EndHeaders: true,
				Priority: http2.PriorityParam{StreamDep: 1, Weight: 9}})
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // a block in CONTINUATIONs
			b := blk(authReq...)
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:4], EndStream: true})
			_ = fr.WriteContinuation(1, false, b[4:9])
			_ = fr.WriteContinuation(1, true, b[9:])
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // refused streams used again
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: blk(req...), EndStream: true, EndHeaders: true})
			_ = fr.WriteRSTStream(7, http2.ErrCodeCancel)
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: blk(req...), EndStream: true, EndHeaders: true})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: blk(req...), EndStream: true, EndHeaders: true})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, BlockFragment: blk(append(req, hxAuth(""), hxAuth("Bearer x"))...), EndStream: true, EndHeaders: true})
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // CONTINUATION without HEADERS
			_ = fr.WriteContinuation(1, true, blk(req...))
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // a block interrupted by DATA
			b := blk(req...)
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
			_ = fr.WriteData(1, true, b[3:])
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // a block interrupted by another stream
			b := blk(req...)
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:3]})
			_ = fr.WriteContinuation(3, true, b[3:])
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // padding over the frame
			_ = fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPadded, 1, append([]byte{200}, blk(req...)...))
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // a short priority
			_ = fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPriority, 1, []byte{0, 0, 0})
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // HEADERS on stream 0
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 0, BlockFragment: blk(req...), EndStream: true, EndHeaders: true})
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // PUSH_PROMISE
			_ = fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: blk(req...), EndHeaders: true})
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // malformed HPACK, a table size update too large
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82, 0x7f, 0xff}, EndStream: true, EndHeaders: true})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hxAppendInt(nil, 0x20, 5, 4097), EndStream: true, EndHeaders: true})
		},
		func(fr *http2.Framer, blk func(...hpack.HeaderField) []byte) { // an HPACK bomb
			big := hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4000)}
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk(append(authReq, big)...), EndStream: true, EndHeaders: true})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: bytes.Repeat([]byte{0x80 | 62}, 300), EndStream: true, EndHeaders: true})
		},
	}
	var seeds [][]byte
	for _, mode := range []byte{0, 1, 3} { // token; cert; cert under a table of 0
		for _, s := range scripts {
			var buf bytes.Buffer
			buf.WriteByte(mode)
			fr := http2.NewFramer(&buf, nil)
			fr.AllowIllegalWrites = true
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			if mode&6 == 2 {
				enc.SetMaxDynamicTableSizeLimit(0)
			}
			s(fr, func(fields ...hpack.HeaderField) []byte {
				hb.Reset()
				for _, f := range fields {
					_ = enc.WriteField(f)
				}
				return bytes.Clone(hb.Bytes())
			})
			seeds = append(seeds, buf.Bytes())
		}
	}
	return seeds
}
