package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
)

// The agent's side of a kubernetes-h2 stream: the stream carries one client's whole HTTP/2
// connection (the proxy ended TLS and nothing else), and the agent relays it onto an HTTP/2
// connection of its own to the kube-apiserver. Frames pass unchanged, with two exceptions in the
// client's direction: every header block is decoded and encoded again (so the agent can add its
// own credentials to a request that has none on a cert stream, and check that every request of a
// token stream carries its own), and on a token stream a request without Authorization is
// answered by the agent (401, then RST_STREAM) and never reaches the kube-apiserver. The server's
// direction is copied frame by frame, untouched; the agent only reads its SETTINGS for the header
// table size and writes its own frames (the 401, flow-control credit for the dropped bodies)
// between the server's frames. There is no HTTP server or client on either end of the tunnel: one
// request costs a few frames copied, not a request parsed and written again twice.

// KubeRelay is how the agent reaches the kube-apiserver for kubernetes-h2 streams; an agent
// without it (a client configuration whose credentials are not a bearer token, or a proxy in the
// way) does not offer the feature, and the proxy forwards requests one by one instead.
type KubeRelay struct {
	// Dial opens a TLS connection to the kube-apiserver that negotiated "h2" (ALPN), carrying no
	// client certificate.
	Dial func(ctx context.Context) (net.Conn, error)
	// Token returns the agent's bearer token (re-read as client-go does for a token file), added
	// to the requests of a cert stream that carry no Authorization of their own.
	Token func() (string, error)
}

const (
	h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

	h2FrameData         = 0x0
	h2FrameHeaders      = 0x1
	h2FramePriority     = 0x2
	h2FrameRSTStream    = 0x3
	h2FrameSettings     = 0x4
	h2FramePushPromise  = 0x5
	h2FrameGoAway       = 0x7
	h2FrameWindowUpdate = 0x8
	h2FrameContinuation = 0x9

	h2FlagEndStream  = 0x1
	h2FlagAck        = 0x1
	h2FlagEndHeaders = 0x4
	h2FlagPadded     = 0x8
	h2FlagPriority   = 0x20

	h2SettingHeaderTableSize = 0x1

	// h2MaxHeaderBlock caps one header block (HEADERS and its CONTINUATIONs) as read, and
	// h2MaxHeaderList the decoded header list (RFC 9113 size: name + value + 32 per field): 1 MiB,
	// the cap of the agent's HTTP/1.1 path (agentMaxHeaderBytes) and of the kube-apiserver.
	h2MaxHeaderBlock = 1 << 20
	h2MaxHeaderList  = 1 << 20
	// h2MaxTableSize caps the HPACK dynamic table the server may allow the client (and so the
	// agent's decoder) to use.
	h2MaxTableSize = 64 << 10
	// h2OutFrame is the largest frame the agent writes: the minimum SETTINGS_MAX_FRAME_SIZE every
	// peer accepts.
	h2OutFrame = 16384
	// h2MaxRefused caps the token-stream requests refused and not yet ended by the client on one
	// connection; a client past it loses the connection.
	h2MaxRefused = 1024
)

// ErrH2Relay wraps every reason the agent ends a relayed HTTP/2 connection for what the client
// sent (a malformed preface, frame or header block, one over the caps above).
var ErrH2Relay = errors.New("tunnel: http/2 relay")

// h2Relay is one relayed connection: client is the tunnel stream, server the kube-apiserver.
type h2Relay struct {
	auth  string // AuthCert or AuthToken
	token func() (string, error)

	cr *bufio.Reader // from the client
	sw *bufio.Writer // to the server
	sr *bufio.Reader // from the server

	cmu sync.Mutex // guards cw: the server's frames and the agent's own
	cw  *bufio.Writer

	dec     *hpack.Decoder
	fields  []hpack.HeaderField
	listLen int
	enc     *hpack.Encoder
	encBuf  bytes.Buffer
	block   []byte
	frame   [9]byte

	// tableSize is the server's SETTINGS_HEADER_TABLE_SIZE: the most the client's encoder, and
	// so the agent's decoder, may use, and the most the agent's encoder may use.
	tableSize  atomic.Uint32
	encLimit   uint32
	lastStream uint32              // highest stream the kube-apiserver saw opened
	refused    map[uint32]struct{} // token-stream requests answered by the agent
	conns      [2]net.Conn         // the stream and the kube-apiserver connection
}

func newH2Relay(auth string, token func() (string, error), client io.Reader, server io.ReadWriter, toClient io.Writer) *h2Relay {
	r := &h2Relay{auth: auth, token: token,
		cr: bufio.NewReaderSize(client, 16<<10), sw: bufio.NewWriterSize(server, 16<<10),
		sr: bufio.NewReaderSize(server, 16<<10), cw: bufio.NewWriterSize(toClient, 32<<10),
		refused: map[uint32]struct{}{}, encLimit: 4096}
	r.tableSize.Store(4096)
	r.dec = hpack.NewDecoder(4096, r.emit)
	r.dec.SetMaxStringLength(h2MaxHeaderList)
	r.enc = hpack.NewEncoder(&r.encBuf)
	return r
}

func (r *h2Relay) emit(f hpack.HeaderField) {
	r.listLen += len(f.Name) + len(f.Value) + 32
	if r.listLen <= h2MaxHeaderList {
		r.fields = append(r.fields, f)
	}
}

// serveKubeRelay relays the client's HTTP/2 connection on st to a new connection to the
// kube-apiserver. The answer (OK or ERR) is written once that connection is up, so the proxy
// can still serve the client another way when it is not.
func (s *agentServer) serveKubeRelay(st net.Conn, br *bufio.Reader, h StreamHeader) {
	defer func() { _ = st.Close() }()
	if s.relay == nil || br.Buffered() > 0 {
		_ = writeAnswer(st, fmt.Errorf("%w: no http/2 relay", ErrUnknownTarget))
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.headTimeout)
	up, err := s.relay.Dial(ctx)
	cancel()
	if err != nil {
		s.log.V(1).Info("relay: dial kube-apiserver failed", "err", err.Error())
		_ = writeAnswer(st, err)
		return
	}
	defer func() { _ = up.Close() }()
	r := newH2Relay(h.Auth, s.relay.Token, st, up, st)
	r.conns = [2]net.Conn{st, up}
	if !s.trackRelay(r, true) {
		return
	}
	defer s.trackRelay(r, false)
	if err := writeAnswer(st, nil); err != nil {
		return
	}
	// The preface must arrive as promptly as a request head on the HTTP/1.1 path.
	_ = st.SetReadDeadline(time.Now().Add(s.headTimeout))
	done := make(chan error, 1)
	go func() { done <- r.serverToClient() }()
	err = r.clientToServer(func() { _ = st.SetReadDeadline(time.Time{}) })
	// Either side ending ends both: closing the kube-apiserver connection cancels its streams.
	r.close()
	if serr := <-done; err == nil || errors.Is(err, io.EOF) {
		err = serr
	}
	if errors.Is(err, ErrH2Relay) {
		s.log.V(1).Info("relay: connection ended", "reason", err.Error())
	}
}

// trackRelay registers a relayed connection for drain and shutdown; false when the agent is
// shutting down.
func (s *agentServer) trackRelay(r *h2Relay, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.relays, r)
		return true
	}
	if s.ctx.Err() != nil {
		return false
	}
	s.relays[r] = struct{}{}
	return true
}

func (r *h2Relay) close() {
	_ = r.conns[0].SetReadDeadline(time.Unix(1, 0)) // a yamux Close is a half-close
	for _, c := range r.conns {
		_ = c.Close()
	}
}

// goAway tells the client, as the server would before it stops, to open no new streams on this
// connection (GOAWAY, NO_ERROR, last stream id 2^31-1: every stream it opened goes on); the
// agent sends it when the proxy drains, so the client's next requests take a new connection
// through another proxy replica while its watches finish here.
func (r *h2Relay) goAway() {
	out := appendFrameHeader(nil, 8, h2FrameGoAway, 0, 0)
	out = binary.BigEndian.AppendUint32(out, 0x7fffffff)
	out = binary.BigEndian.AppendUint32(out, 0)
	_ = r.toClient(out)
}

// readFrameHeader reads the 9 bytes of a frame header.
func readFrameHeader(br *bufio.Reader, b *[9]byte) (length uint32, typ, flags byte, stream uint32, err error) {
	if _, err = io.ReadFull(br, b[:]); err != nil {
		return
	}
	length = uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
	return length, b[3], b[4], binary.BigEndian.Uint32(b[5:]) & 0x7fffffff, nil
}

func appendFrameHeader(p []byte, length int, typ, flags byte, stream uint32) []byte {
	p = append(p, byte(length>>16), byte(length>>8), byte(length), typ, flags)
	return binary.BigEndian.AppendUint32(p, stream)
}

// clientToServer relays the client's frames until either side fails; started is called once the
// preface is in.
func (r *h2Relay) clientToServer(started func()) error {
	var pre [len(h2Preface)]byte
	if _, err := io.ReadFull(r.cr, pre[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || isTimeout(err) {
			return fmt.Errorf("%w: no connection preface: %w", ErrH2Relay, err)
		}
		return err
	}
	if string(pre[:]) != h2Preface {
		return fmt.Errorf("%w: not an http/2 connection preface", ErrH2Relay)
	}
	started()
	if _, err := r.sw.WriteString(h2Preface); err != nil {
		return err
	}
	for {
		if r.cr.Buffered() == 0 {
			// Nothing more is waiting: what was relayed leaves now, in as few TLS records as it fits.
			if err := r.sw.Flush(); err != nil {
				return err
			}
		}
		length, typ, flags, stream, err := readFrameHeader(r.cr, &r.frame)
		if err != nil {
			return err
		}
		switch typ {
		case h2FrameHeaders:
			err = r.headers(length, flags, stream)
		case h2FrameContinuation:
			err = fmt.Errorf("%w: CONTINUATION without HEADERS", ErrH2Relay)
		case h2FramePushPromise:
			err = fmt.Errorf("%w: PUSH_PROMISE from a client", ErrH2Relay)
		default:
			// A frame of a request the agent answered itself, or of a client stream the kube-apiserver
			// never saw opened: idle there, where anything but PRIORITY ends the whole connection.
			if _, ok := r.refused[stream]; stream != 0 && (ok || (stream > r.lastStream && stream%2 == 1 && typ != h2FramePriority)) {
				err = r.dropRefused(length, typ, flags, stream)
				break
			}
			if _, err = r.sw.Write(r.frame[:]); err == nil {
				_, err = io.CopyN(r.sw, r.cr, int64(length))
			}
		}
		if err != nil {
			return err
		}
	}
}

// dropRefused swallows a frame of a request the agent answered itself, giving the client back the
// connection-level flow-control credit its DATA took (the kube-apiserver never saw it).
func (r *h2Relay) dropRefused(length uint32, typ, flags byte, stream uint32) error {
	if _, err := r.cr.Discard(int(length)); err != nil {
		return err
	}
	if (typ == h2FrameData && flags&h2FlagEndStream != 0) || typ == h2FrameRSTStream {
		delete(r.refused, stream)
	}
	if typ != h2FrameData || length == 0 {
		return nil
	}
	var p [13]byte
	out := appendFrameHeader(p[:0], 4, h2FrameWindowUpdate, 0, 0)
	out = binary.BigEndian.AppendUint32(out, length)
	return r.toClient(out)
}

// headers reads a header block (HEADERS, then CONTINUATION frames of the same stream), decodes
// it and sends it on, encoded again by the agent's encoder, or answers the request itself.
func (r *h2Relay) headers(length uint32, flags byte, stream uint32) error {
	if stream == 0 {
		return fmt.Errorf("%w: HEADERS on stream 0", ErrH2Relay)
	}
	block, err := r.readBlock(length, flags, stream)
	if err != nil {
		return err
	}
	if ts := r.tableSize.Load(); ts != r.encLimit {
		r.dec.SetAllowedMaxDynamicTableSize(ts)
		r.enc.SetMaxDynamicTableSizeLimit(ts)
		r.encLimit = ts
	}
	r.fields, r.listLen = r.fields[:0], 0
	if _, err := r.dec.Write(block); err != nil {
		return fmt.Errorf("%w: header block: %w", ErrH2Relay, err)
	}
	if err := r.dec.Close(); err != nil {
		return fmt.Errorf("%w: header block: %w", ErrH2Relay, err)
	}
	if cap(r.block) > 64<<10 {
		r.block = nil // a large block was an exception: do not keep its buffer
	}
	if r.listLen > h2MaxHeaderList {
		return fmt.Errorf("%w: header list of %d bytes is over %d", ErrH2Relay, r.listLen, h2MaxHeaderList)
	}
	endStream := flags&h2FlagEndStream != 0
	if _, ok := r.refused[stream]; ok {
		if endStream {
			delete(r.refused, stream)
		}
		return nil // trailers of a refused request
	}
	if stream > r.lastStream {
		// A new request for the kube-apiserver (a stream above every one it saw), whatever the
		// client did before with the streams the agent refused: it passes the credential rule.
		if ok, err := r.authorize(stream, endStream); !ok || err != nil {
			return err
		}
		r.lastStream = stream
	}
	r.encBuf.Reset()
	for _, f := range r.fields {
		if err := r.enc.WriteField(f); err != nil {
			return err
		}
	}
	return r.writeBlock(r.encBuf.Bytes(), stream, flags&h2FlagEndStream)
}

// readBlock collects a header block's fragments without padding or priority.
func (r *h2Relay) readBlock(length uint32, flags byte, stream uint32) ([]byte, error) {
	r.block = r.block[:0]
	first := true
	for {
		if int(length)+len(r.block) > h2MaxHeaderBlock {
			return nil, fmt.Errorf("%w: header block over %d bytes", ErrH2Relay, h2MaxHeaderBlock)
		}
		start := len(r.block)
		r.block = slices.Grow(r.block, int(length))[:start+int(length)]
		if _, err := io.ReadFull(r.cr, r.block[start:]); err != nil {
			return nil, err
		}
		if first {
			p := r.block[start:]
			pad := 0
			if flags&h2FlagPadded != 0 {
				if len(p) < 1 {
					return nil, fmt.Errorf("%w: HEADERS too short for its padding", ErrH2Relay)
				}
				pad, p = int(p[0]), p[1:]
			}
			if flags&h2FlagPriority != 0 {
				if len(p) < 5 {
					return nil, fmt.Errorf("%w: HEADERS too short for its priority", ErrH2Relay)
				}
				p = p[5:]
			}
			if pad > len(p) {
				return nil, fmt.Errorf("%w: HEADERS padding longer than the frame", ErrH2Relay)
			}
			p = p[:len(p)-pad]
			r.block = append(r.block[:start], p...)
			first = false
		}
		if flags&h2FlagEndHeaders != 0 {
			return r.block, nil
		}
		var typ byte
		var id uint32
		var err error
		if length, typ, flags, id, err = readFrameHeader(r.cr, &r.frame); err != nil {
			return nil, err
		}
		if typ != h2FrameContinuation || id != stream {
			return nil, fmt.Errorf("%w: header block of stream %d interrupted by a frame of type %d on stream %d",
				ErrH2Relay, stream, typ, id)
		}
	}
}

// authorize applies the stream's credential rule to a new request: on a cert stream the agent's
// token is added when the request carries no Authorization; on a token stream a request without
// one is answered 401 by the agent. It reports whether the request goes on.
func (r *h2Relay) authorize(stream uint32, endStream bool) (bool, error) {
	for _, f := range r.fields {
		if f.Name == "authorization" {
			if f.Value != "" {
				return true, nil
			}
			break // the first one is the one the kube-apiserver reads (Header.Get)
		}
	}
	if r.auth == AuthCert {
		tok, err := r.token()
		if err != nil {
			return false, fmt.Errorf("read the agent's token: %w", err)
		}
		// In place of empty ones, as the request-by-request path sets it.
		r.fields = slices.DeleteFunc(r.fields, func(f hpack.HeaderField) bool { return f.Name == "authorization" })
		r.fields = append(r.fields, hpack.HeaderField{Name: "authorization", Value: "Bearer " + tok, Sensitive: true})
		return true, nil
	}
	if len(r.refused) >= h2MaxRefused {
		return false, fmt.Errorf("%w: over %d requests without credentials", ErrH2Relay, h2MaxRefused)
	}
	if !endStream {
		r.refused[stream] = struct{}{}
	}
	return false, r.toClient(refusal(stream, !endStream))
}

// refusal is the agent's 401 for a token-stream request without Authorization: a HEADERS frame
// whose fields are literals that touch no HPACK table (the client's decoder keeps the server's
// table), then RST_STREAM(NO_ERROR) when the request's body may still be coming. It carries no
// body, so the flow-control windows the client and server keep are not disturbed.
func refusal(stream uint32, reset bool) []byte {
	var blk bytes.Buffer
	e := hpack.NewEncoder(&blk)
	for _, f := range []hpack.HeaderField{
		{Name: ":status", Value: "401"},
		{Name: "content-length", Value: "0"},
		{Name: "x-ks-mc-error", Value: "present a client certificate issued by the proxy CA (the kubeconfig in the Cluster's spec.connection) or a bearer token"},
	} {
		f.Sensitive = true // never indexed: the client's decoder table stays the server's
		_ = e.WriteField(f)
	}
	out := appendFrameHeader(nil, blk.Len(), h2FrameHeaders, h2FlagEndHeaders|h2FlagEndStream, stream)
	out = append(out, blk.Bytes()...)
	if reset {
		out = appendFrameHeader(out, 4, h2FrameRSTStream, 0, stream)
		out = binary.BigEndian.AppendUint32(out, 0)
	}
	return out
}

// writeBlock sends a header block as HEADERS and CONTINUATION frames of at most h2OutFrame.
func (r *h2Relay) writeBlock(block []byte, stream uint32, endStream byte) error {
	typ, flags := byte(h2FrameHeaders), endStream
	for {
		n := min(len(block), h2OutFrame)
		f := flags
		if n == len(block) {
			f |= h2FlagEndHeaders
		}
		hdr := appendFrameHeader(r.frame[:0], n, typ, f, stream)
		if _, err := r.sw.Write(hdr); err != nil {
			return err
		}
		if _, err := r.sw.Write(block[:n]); err != nil {
			return err
		}
		block = block[n:]
		if len(block) == 0 {
			return nil
		}
		typ, flags = h2FrameContinuation, 0
	}
}

// toClient writes the agent's own frames between the server's.
func (r *h2Relay) toClient(p []byte) error {
	r.cmu.Lock()
	defer r.cmu.Unlock()
	if _, err := r.cw.Write(p); err != nil {
		return err
	}
	return r.cw.Flush()
}

// serverToClient copies the server's frames to the client unchanged, reading the header table
// size from its SETTINGS; what arrived together leaves together.
func (r *h2Relay) serverToClient() error {
	var hdr [9]byte
	for {
		length, typ, flags, stream, err := readFrameHeader(r.sr, &hdr)
		if err != nil {
			return err
		}
		r.cmu.Lock()
		_, err = r.cw.Write(hdr[:])
		if err == nil && typ == h2FrameSettings && flags&h2FlagAck == 0 && stream == 0 && length <= 6*64 && length%6 == 0 {
			err = r.settings(int(length))
		} else if err == nil {
			_, err = io.CopyN(r.cw, r.sr, int64(length))
		}
		if err == nil && r.sr.Buffered() == 0 {
			err = r.cw.Flush()
		}
		r.cmu.Unlock()
		if err != nil {
			return err
		}
	}
}

// settings copies a SETTINGS frame's payload, noting SETTINGS_HEADER_TABLE_SIZE. A smaller table
// applies to the agent's encoder before the server needs it to (always allowed); a larger one
// lets the client's encoder, and so the agent's decoder, use more, up to h2MaxTableSize.
func (r *h2Relay) settings(length int) error {
	var p [6 * 64]byte
	if _, err := io.ReadFull(r.sr, p[:length]); err != nil {
		return err
	}
	for i := 0; i < length; i += 6 {
		if binary.BigEndian.Uint16(p[i:]) == h2SettingHeaderTableSize {
			r.tableSize.Store(min(binary.BigEndian.Uint32(p[i+2:]), h2MaxTableSize))
		}
	}
	_, err := r.cw.Write(p[:length])
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// NewKubeRelay is the KubeRelay of a kube-apiserver at addr (host:port) reached with tlsCfg
// (server verification only: the relay carries no client certificate) and the agent's token.
func NewKubeRelay(addr string, tlsCfg *tls.Config, token func() (string, error)) *KubeRelay {
	cfg := tlsCfg.Clone()
	cfg.NextProtos = []string{"h2"}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}, Config: cfg}
	return &KubeRelay{Token: token, Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("dial kube-apiserver %s: %w", addr, err)
		}
		if p := c.(*tls.Conn).ConnectionState().NegotiatedProtocol; p != "h2" {
			_ = c.Close()
			return nil, fmt.Errorf("kube-apiserver %s does not speak http/2 (ALPN %q)", addr, p)
		}
		return c, nil
	}}
}
