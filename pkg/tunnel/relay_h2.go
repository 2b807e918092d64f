package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
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

	h2SettingHeaderTableSize   = 0x1
	h2SettingInitialWindowSize = 0x4

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

	cmu sync.Mutex // guards cw, started and pending: the server's frames and the agent's own
	cw  *bufio.Writer
	// started: the server's first frame (its SETTINGS) has gone to the client; the agent's own
	// frames wait in pending until then, since a client must see the server's SETTINGS first.
	started bool
	pending []byte

	smu      sync.Mutex // guards open and draining
	open     map[uint32]uint8
	draining bool

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
	// reserve is the connection-level window withheld from the server for the agent's own DATA,
	// clientWindow the client's SETTINGS_INITIAL_WINDOW_SIZE (relay_h2_frames.go).
	reserve      int
	clientWindow uint32
	conns        [2]net.Conn // the stream and the kube-apiserver connection
	// upReady reports whether the server's next TLS record is already read (tlsbatch.go): the
	// frames copied so far then wait for it, and leave together.
	upReady func() bool
	// upPeek reads what the server's socket already holds, without waiting, and reports upReady
	// after it: before a response's HEADERS leave alone (serverToClient).
	upPeek func() bool
}

func newH2Relay(auth string, token func() (string, error), client io.Reader, server io.ReadWriter, toClient io.Writer) *h2Relay {
	r := &h2Relay{auth: auth, token: token,
		cr: bufio.NewReaderSize(client, 16<<10), sw: bufio.NewWriterSize(server, 16<<10),
		sr: bufio.NewReaderSize(server, 16<<10), cw: bufio.NewWriterSize(toClient, 64<<10),
		refused: map[uint32]struct{}{}, open: map[uint32]uint8{}, encLimit: 4096, clientWindow: 65535}
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
	// The client's connection: a data connection of its own when the proxy asked for one and it
	// comes up (proxy_relay.go; the stream then ends unanswered), else the stream.
	client := st
	if h.Relay != "" && s.dialData != nil {
		ctx, cancel := context.WithTimeout(s.ctx, s.headTimeout)
		dc, err := s.dialData(ctx, h.Relay)
		cancel()
		if err == nil {
			client = dc
			_ = st.Close()
			defer func() { _ = dc.Close() }()
		} else {
			s.log.V(1).Info("relay: no data connection, relaying on the stream", "err", err.Error())
		}
	}
	r := newH2Relay(h.Auth, s.relay.Token, client, up, client)
	r.conns = [2]net.Conn{client, up}
	if b, ok := up.(*batchedTLS); ok {
		r.upReady, r.upPeek = b.recordReady, b.peekRecord
	}
	if !s.trackRelay(r, true) {
		return
	}
	defer s.trackRelay(r, false)
	if client == st {
		if err := writeAnswer(st, nil); err != nil {
			return
		}
	}
	// The preface must arrive as promptly as a request head on the HTTP/1.1 path.
	_ = client.SetReadDeadline(time.Now().Add(s.headTimeout))
	done := make(chan error, 1)
	go func() { done <- r.serverToClient() }()
	err = r.clientToServer(func() { _ = client.SetReadDeadline(time.Time{}) })
	// Either side ending ends both: closing the kube-apiserver connection cancels its streams.
	r.close()
	if serr := <-done; errors.Is(err, io.EOF) {
		err = serr // the client left: why the server's side ended says more
	}
	if errors.Is(err, ErrH2Relay) {
		s.log.V(1).Info("relay: connection ended", "reason", err.Error())
	}
}

// relayCount is the number of relayed connections being served.
func (s *agentServer) relayCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.relays)
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
			switch {
			case typ == h2FrameWindowUpdate && stream == 0:
				err = r.windowUpdate(length)
			case typ == h2FrameSettings && stream == 0:
				err = r.clientSettings(length, flags)
			default:
				err = r.passFrame(length)
			}
			if err == nil && ((typ == h2FrameData && flags&h2FlagEndStream != 0) || typ == h2FrameRSTStream) &&
				r.ended(stream, h2ClientEnded, typ == h2FrameRSTStream) {
				// Drained and idle: what the client sent last must reach the server first.
				_ = r.sw.Flush()
				r.closeFlushed()
			}
		}
		if err != nil {
			return err
		}
	}
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
		r.opened(stream)
	} else if !r.isOpen(stream) {
		// Not a new request, and not the trailers of an open one: the stream has ended (or never
		// was). It is not passed on, so no header block the agent did not authorize reaches the
		// kube-apiserver whatever it would make of it.
		return nil
	}
	r.encBuf.Reset()
	for _, f := range r.fields {
		if err := r.enc.WriteField(f); err != nil {
			return err
		}
	}
	if err := r.writeBlock(r.encBuf.Bytes(), stream, flags&h2FlagEndStream); err != nil {
		return err
	}
	if endStream && r.ended(stream, h2ClientEnded, false) {
		_ = r.sw.Flush()
		r.closeFlushed()
	}
	return nil
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
	withBody := len(refusalBody) <= r.reserve && uint32(len(refusalBody)) <= r.clientWindow
	if withBody {
		r.reserve -= len(refusalBody)
	}
	return false, r.toClient(refusal(stream, !endStream, withBody))
}

// kubeRelayDialer dials the kube-apiserver for relayed connections, with a bounded receive buffer
// (sockbuf_linux.go).
func kubeRelayDialer() *net.Dialer {
	return &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: boundRcvBuf(relayUpstreamRcvBuf)}
}

// NewKubeRelay is the KubeRelay of a kube-apiserver at addr (host:port) reached with tlsCfg
// (server verification only: the relay carries no client certificate) and the agent's token.
func NewKubeRelay(addr string, tlsCfg *tls.Config, token func() (string, error)) *KubeRelay {
	cfg := tlsCfg.Clone()
	cfg.NextProtos = []string{"h2"}
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	d := kubeRelayDialer()
	return &KubeRelay{Token: token, Dial: func(ctx context.Context) (net.Conn, error) {
		raw, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("dial kube-apiserver %s: %w", addr, err)
		}
		tc, c := tlsClientBatched(raw, cfg, true)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("tls handshake with kube-apiserver %s: %w", addr, err)
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			_ = c.Close()
			return nil, fmt.Errorf("kube-apiserver %s does not speak http/2 (ALPN %q)", addr, p)
		}
		return c, nil
	}}
}
