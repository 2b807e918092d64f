package tunnel

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"sync"
)

// crypto/tls writes every record (16 KiB of plaintext at most, ~1.2 KiB while a connection's
// first 128 KiB leave) with a write of its own to the socket. On the tunnel's hot paths a write
// is a syscall that also runs the peer's TCP receive path, the largest single cost in the proxy's
// and the agent's CPU profiles, so the records of one large Write are collected under the
// tls.Conn and leave in one socket write.

// recordBatcher sits under a tls.Conn: while batching, what the tls.Conn writes is collected.
// With read-ahead (rbuf set) it also hands the tls.Conn at most one record at a time, so that a
// relay can see whether the next record is already here (recordReady) and hold its write until
// it has copied that one too: one socket read often brings several records, and crypto/tls
// returns them one Read at a time.
type recordBatcher struct {
	net.Conn
	// raw, for a TCP connection on Linux, does the socket's reads and writes (rawio_linux.go);
	// pre holds bytes read from it before (a sniffed first byte) and is handed over first.
	raw *rawTCP
	pre *bufio.Reader
	mu  sync.Mutex
	on  bool
	buf []byte

	// Read side, used only by the goroutine reading the tls.Conn.
	rbuf       []byte
	rpos, rend int
	rerr       error
	hdr        [5]byte
	hdrGot     int // bytes of the current record header handed over
	left       int // bytes of the current record's body not yet handed over
}

// newRecordBatcher makes a recordBatcher over c, a TCP connection or one with a sniffed head
// (bufferedConn).
func newRecordBatcher(c net.Conn) *recordBatcher {
	b := &recordBatcher{Conn: c}
	if bc, ok := c.(*bufferedConn); ok {
		if b.raw = newRawTCP(bc.Conn); b.raw != nil {
			b.pre = bc.r
		}
	} else {
		b.raw = newRawTCP(c)
	}
	return b
}

// connRead reads the connection.
func (b *recordBatcher) connRead(p []byte) (int, error) {
	if b.raw == nil {
		return b.Conn.Read(p)
	}
	if b.pre != nil {
		if n := b.pre.Buffered(); n > 0 {
			return b.pre.Read(p[:min(len(p), n)])
		}
		b.pre = nil
	}
	return b.raw.Read(p)
}

func (b *recordBatcher) connWrite(p []byte) (int, error) {
	if b.raw == nil {
		return b.Conn.Write(p)
	}
	return b.raw.Write(p)
}

func (b *recordBatcher) Read(p []byte) (int, error) {
	if b.rbuf == nil {
		return b.connRead(p)
	}
	if b.rpos == b.rend {
		if err := b.rerr; err != nil {
			// An error that came with data, once that data is handed over. Errors are not
			// kept beyond that: a deadline's timeout (net/http aborts its background read
			// with one) must not outlive the deadline.
			b.rerr = nil
			return 0, err
		}
		n, err := b.connRead(b.rbuf)
		b.rpos, b.rend = 0, n
		if n == 0 {
			return 0, err
		}
		b.rerr = err
	}
	avail := b.rbuf[b.rpos:b.rend]
	var n int
	if b.left == 0 {
		// In a record header: hand over only its bytes, and learn the record's length.
		n = copy(p, avail[:min(len(avail), 5-b.hdrGot)])
		copy(b.hdr[b.hdrGot:], avail[:n])
		if b.hdrGot += n; b.hdrGot == 5 {
			b.hdrGot, b.left = 0, int(b.hdr[3])<<8|int(b.hdr[4])
		}
	} else {
		n = copy(p, avail[:min(len(avail), b.left)])
		b.left -= n
	}
	b.rpos += n
	return n, nil
}

// recordReady reports whether a whole next application-data record is buffered here (so a Read
// of the tls.Conn returns it without waiting; another kind of record, an alert or a
// post-handshake message, may not yield data, so it does not count).
func (b *recordBatcher) recordReady() bool {
	if b.rbuf == nil || b.left != 0 || b.hdrGot != 0 {
		return false
	}
	avail := b.rbuf[b.rpos:b.rend]
	return len(avail) >= 5 && avail[0] == recordTypeApplicationData && len(avail) >= 5+(int(avail[3])<<8|int(avail[4]))
}

const recordTypeApplicationData = 23

// peek reads, without waiting, what the socket already holds when nothing is buffered here
// (read-ahead over raw I/O only; the goroutine reading the tls.Conn calls it). A relay about to
// write a response's HEADERS alone looks whether its DATA has come meanwhile: the kube-apiserver
// writes the two apart, and a response that leaves in one write costs every later hop one read,
// one write and one wake-up less.
func (b *recordBatcher) peek() {
	if b.rbuf == nil || b.raw == nil || b.rpos != b.rend || b.rerr != nil || b.pre != nil {
		return
	}
	n, err := b.raw.readNow(b.rbuf)
	b.rpos, b.rend, b.rerr = 0, n, err
}

func (b *recordBatcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.on {
		b.buf = append(b.buf, p...)
		b.mu.Unlock()
		return len(p), nil
	}
	b.mu.Unlock()
	return b.connWrite(p)
}

// batchPool holds the batches' buffers: a connection keeps none between writes.
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// batchedTLS is a tls.Conn whose large writes leave in one socket write.
type batchedTLS struct {
	*tls.Conn
	under *recordBatcher
	wmu   sync.Mutex
}

// batchThreshold: a write up to this size is one record anyway.
const batchThreshold = 1024

func (c *batchedTLS) Write(p []byte) (int, error) {
	if len(p) <= batchThreshold {
		return c.Conn.Write(p)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	bp := batchPool.Get().(*[]byte)
	b := c.under
	b.mu.Lock()
	b.on, b.buf = true, (*bp)[:0]
	b.mu.Unlock()
	n, err := c.Conn.Write(p)
	// The batch leaves before batching ends: a record crypto/tls writes meanwhile from another
	// goroutine (an alert, a KeyUpdate answer from the read side) either joins the batch after its
	// records or waits for them, never overtaking them on the socket.
	b.mu.Lock()
	out := b.buf
	if len(out) > 0 {
		if _, werr := b.connWrite(out); werr != nil && err == nil {
			n, err = 0, werr
		}
	}
	b.on, b.buf = false, nil
	b.mu.Unlock()
	if cap(out) <= 1<<20 {
		*bp = out[:0]
		batchPool.Put(bp)
	}
	return n, err
}

// tlsBatched wraps a TLS connection made over a recordBatcher; any other connection is returned
// as it is.
func tlsBatched(c net.Conn) net.Conn {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return c
	}
	if b, ok := tc.NetConn().(*recordBatcher); ok {
		return &batchedTLS{Conn: tc, under: b}
	}
	return c
}

// recordReady: see recordBatcher.recordReady (false without read-ahead).
func (c *batchedTLS) recordReady() bool { return c.under.recordReady() }

// peekRecord: see recordBatcher.peek; it reports recordReady after it.
func (c *batchedTLS) peekRecord() bool {
	c.under.peek()
	return c.under.recordReady()
}

// readAheadSize holds four whole records: as much as the relay's 64 KiB writes take.
const readAheadSize = 4 * (16384 + 2048)

// tlsClientBatched and tlsServerBatched make a TLS connection over c whose large writes are
// batched; with readAhead it also reads ahead (recordReady), at the cost of a 72 KiB buffer.
func tlsClientBatched(c net.Conn, cfg *tls.Config, readAhead bool) (*tls.Conn, *batchedTLS) {
	return newBatchedTLS(c, cfg, readAhead, tls.Client)
}

func tlsServerBatched(c net.Conn, cfg *tls.Config, readAhead bool) (*tls.Conn, *batchedTLS) {
	return newBatchedTLS(c, cfg, readAhead, tls.Server)
}

func newBatchedTLS(c net.Conn, cfg *tls.Config, readAhead bool, side func(net.Conn, *tls.Config) *tls.Conn) (*tls.Conn, *batchedTLS) {
	b := newRecordBatcher(c)
	if readAhead {
		b.rbuf = make([]byte, readAheadSize)
	}
	tc := side(b, cfg)
	return tc, &batchedTLS{Conn: tc, under: b}
}

// recordCopy copies a relayed client's bytes to dst: what arrived together (whole records
// already read from the socket) leaves in one write. Its 32 KiB buffer holds a whole record's
// plaintext, so a Read never leaves part of one inside the tls.Conn.
func recordCopy(dst io.Writer, src *batchedTLS) error {
	buf := make([]byte, 32<<10)
	for {
		m := 0
		var err error
		for {
			var n int
			n, err = src.Read(buf[m:])
			m += n
			if err != nil || len(buf)-m < 16384 || !src.recordReady() {
				break
			}
		}
		if m > 0 {
			if _, werr := dst.Write(buf[:m]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
	}
}
