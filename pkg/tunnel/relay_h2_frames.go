package tunnel

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"

	"golang.org/x/net/http2/hpack"
)

// The relay's frame plumbing: frame headers, the server's direction, the frames the agent writes
// itself (401s, flow-control credit, GOAWAY) and the stream bookkeeping that closes a drained
// relay once it is idle.

// Stream bookkeeping, for closing a drained relay once it is idle: a stream is open from the
// client's HEADERS until both sides ended it (END_STREAM) or either reset it.
const (
	h2ClientEnded uint8 = 1
	h2ServerEnded uint8 = 2
)

// goAway tells the client, as the server would before it stops, to open no new streams on this
// connection (GOAWAY, NO_ERROR, last stream id 2^31-1: every stream it opened goes on); the
// agent sends it when the proxy or the agent drains, so the client's next requests take a new
// connection (through another proxy replica or agent) while its watches finish here. The relay
// closes once no stream is open, as a server does after its GOAWAY.
func (r *h2Relay) goAway() {
	out := appendFrameHeader(nil, 8, h2FrameGoAway, 0, 0)
	out = binary.BigEndian.AppendUint32(out, 0x7fffffff)
	out = binary.BigEndian.AppendUint32(out, 0)
	_ = r.toClient(out)
	r.smu.Lock()
	r.draining = true
	idle := len(r.open) == 0
	r.smu.Unlock()
	if idle {
		r.closeFlushed()
	}
}

func (r *h2Relay) opened(stream uint32) {
	r.smu.Lock()
	r.open[stream] = 0
	r.smu.Unlock()
}

func (r *h2Relay) isOpen(stream uint32) bool {
	r.smu.Lock()
	defer r.smu.Unlock()
	_, ok := r.open[stream]
	return ok
}

// ended records the end of one side of stream (both with reset) and reports whether the relay
// is drained and idle now.
func (r *h2Relay) ended(stream uint32, side uint8, reset bool) bool {
	r.smu.Lock()
	defer r.smu.Unlock()
	st, ok := r.open[stream]
	if !ok {
		return false
	}
	if st |= side; reset || st == h2ClientEnded|h2ServerEnded {
		delete(r.open, stream)
	} else {
		r.open[stream] = st
	}
	return r.draining && len(r.open) == 0
}

// closeFlushed sends what the client is owed, then ends the relay.
func (r *h2Relay) closeFlushed() {
	r.cmu.Lock()
	_ = r.cw.Flush()
	r.cmu.Unlock()
	r.close()
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

// refusalBody is the 401's body, the Kubernetes Status the request-by-request path answers.
var refusalBody = statusJSON(401, "Unauthorized", tokenStreamAdvice)

// refusal is the agent's 401 for a token-stream request without Authorization: a HEADERS frame
// whose fields are literals that touch no HPACK table (the client's decoder keeps the server's
// table), with the Status body in a DATA frame when withBody, then RST_STREAM(NO_ERROR) when the
// request's body may still be coming. Without the body the advice travels in x-ks-mc-error.
func refusal(stream uint32, reset, withBody bool) []byte {
	var blk bytes.Buffer
	e := hpack.NewEncoder(&blk)
	fields := []hpack.HeaderField{{Name: ":status", Value: "401"}, {Name: "content-length", Value: "0"},
		{Name: "x-ks-mc-error", Value: tokenStreamAdvice}}
	if withBody {
		fields = []hpack.HeaderField{{Name: ":status", Value: "401"}, {Name: "content-type", Value: "application/json"},
			{Name: "content-length", Value: strconv.Itoa(len(refusalBody))}}
	}
	for _, f := range fields {
		f.Sensitive = true // never indexed: the client's decoder table stays the server's
		_ = e.WriteField(f)
	}
	flags := byte(h2FlagEndHeaders)
	if !withBody {
		flags |= h2FlagEndStream
	}
	out := appendFrameHeader(nil, blk.Len(), h2FrameHeaders, flags, stream)
	out = append(out, blk.Bytes()...)
	if withBody {
		out = appendFrameHeader(out, len(refusalBody), h2FrameData, h2FlagEndStream, stream)
		out = append(out, refusalBody...)
	}
	if reset {
		out = appendFrameHeader(out, 4, h2FrameRSTStream, 0, stream)
		out = binary.BigEndian.AppendUint32(out, 0)
	}
	return out
}

// Flow control of the agent's own DATA (the 401 bodies). The client counts them against its
// connection's receive window, which the server also fills: so that the two together never
// exceed what the client granted, the agent withholds up to h2Reserve bytes of the client's
// connection-level WINDOW_UPDATEs from the server and spends only those. It takes them only from
// a large grant (h2ReserveFrom: Go's clients open their connection window by 1 GiB at once), so a
// client that grants its window in small steps is never kept waiting on what the agent holds back.
// A 401 goes without its body when the reserve, or the client's window for a new stream, is too
// small for it.
const (
	h2Reserve     = 64 << 10
	h2ReserveFrom = 1 << 20
)

// windowUpdate relays the client's connection-level WINDOW_UPDATE, keeping what the reserve lacks.
func (r *h2Relay) windowUpdate(length uint32) error {
	if length != 4 {
		return r.passFrame(length)
	}
	var p [4]byte
	if _, err := io.ReadFull(r.cr, p[:]); err != nil {
		return err
	}
	if inc := binary.BigEndian.Uint32(p[:]) & 0x7fffffff; inc >= h2ReserveFrom && r.reserve < h2Reserve {
		take := h2Reserve - r.reserve // inc stays above zero: h2ReserveFrom > h2Reserve
		r.reserve = h2Reserve
		binary.BigEndian.PutUint32(p[:], inc-uint32(take))
	}
	if _, err := r.sw.Write(r.frame[:]); err != nil {
		return err
	}
	_, err := r.sw.Write(p[:])
	return err
}

// clientSettings relays the client's SETTINGS, noting SETTINGS_INITIAL_WINDOW_SIZE (a new
// stream's window: a 401 body must fit in it).
func (r *h2Relay) clientSettings(length uint32, flags byte) error {
	if flags&h2FlagAck != 0 || length > 6*64 || length%6 != 0 {
		return r.passFrame(length)
	}
	var p [6 * 64]byte
	if _, err := io.ReadFull(r.cr, p[:length]); err != nil {
		return err
	}
	for i := 0; i < int(length); i += 6 {
		if binary.BigEndian.Uint16(p[i:]) == h2SettingInitialWindowSize {
			r.clientWindow = binary.BigEndian.Uint32(p[i+2:])
		}
	}
	if _, err := r.sw.Write(r.frame[:]); err != nil {
		return err
	}
	_, err := r.sw.Write(p[:length])
	return err
}

// passFrame sends the frame whose header is in r.frame on, unchanged.
func (r *h2Relay) passFrame(length uint32) error {
	if _, err := r.sw.Write(r.frame[:]); err != nil {
		return err
	}
	_, err := io.CopyN(r.sw, r.cr, int64(length))
	return err
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
	if !r.started {
		r.pending = append(r.pending, p...)
		return nil
	}
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
			r.cmu.Lock()
			_ = r.cw.Flush() // what the server sent before it ended
			r.cmu.Unlock()
			return err
		}
		r.cmu.Lock()
		_, err = r.cw.Write(hdr[:])
		if err == nil && typ == h2FrameSettings && flags&h2FlagAck == 0 && stream == 0 && length <= 6*64 && length%6 == 0 {
			err = r.settings(int(length))
		} else if err == nil {
			_, err = io.CopyN(r.cw, r.sr, int64(length))
		}
		if err == nil && !r.started {
			r.started = true
			_, err = r.cw.Write(r.pending)
			r.pending = nil
		}
		if err == nil && r.sr.Buffered() == 0 && (r.upReady == nil || !r.upReady()) {
			// A response's HEADERS with more to come: its DATA may be in the socket already
			// (the kube-apiserver writes the two apart), then both leave in one write.
			more := typ == h2FrameHeaders && flags&(h2FlagEndStream|h2FlagEndHeaders) == h2FlagEndHeaders && r.upPeek != nil && r.upPeek()
			if !more {
				err = r.cw.Flush()
			}
		}
		r.cmu.Unlock()
		if err != nil {
			return err
		}
		if ((typ == h2FrameHeaders || typ == h2FrameData) && flags&h2FlagEndStream != 0) || typ == h2FrameRSTStream {
			if r.ended(stream, h2ServerEnded, typ == h2FrameRSTStream) {
				r.closeFlushed()
			}
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
