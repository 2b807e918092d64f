package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tcpPair is a connected pair of TCP connections on loopback.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func TestRawTCPOnlyForTCP(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if newRawTCP(p) != nil {
		t.Fatal("a pipe got raw I/O")
	}
	a, _ := tcpPair(t)
	if newRawTCP(a) == nil {
		t.Fatal("a TCP connection got no raw I/O")
	}
}

// A write larger than the socket takes leaves in parts (EAGAIN, the poller, the rest), whole and in
// order, and concurrent writers' writes never interleave.
func TestRawTCPWritesWholeAndAtomic(t *testing.T) {
	a, b := tcpPair(t)
	_ = a.SetWriteBuffer(16 << 10)
	_ = b.SetReadBuffer(16 << 10)
	w := newRawTCP(a)
	const block, writers = 256 << 10, 8
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if n, err := w.Write(bytes.Repeat([]byte{byte('a' + i)}, block)); err != nil || n != block {
				t.Errorf("write %d: %d, %v", i, n, err)
			}
		}()
	}
	r := newRawTCP(b)
	got := make([]byte, 0, writers*block)
	buf := make([]byte, 3000)
	for len(got) < writers*block {
		time.Sleep(time.Microsecond) // a slow reader: the writers wait for the socket
		n, err := r.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	wg.Wait()
	for i := 0; i < writers; i++ {
		run := got[i*block : (i+1)*block]
		if !bytes.Equal(run, bytes.Repeat(run[:1], block)) {
			t.Fatalf("write %d of %d was interleaved with another", i+1, writers)
		}
	}
}

func TestRawTCPErrorsAreNets(t *testing.T) {
	t.Run("deadline, not sticky", func(t *testing.T) {
		a, b := tcpPair(t)
		r := newRawTCP(b)
		_ = b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := r.Read(make([]byte, 10))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) || !isTimeout(err) {
			t.Fatalf("read past the deadline: %v", err)
		}
		_ = b.SetReadDeadline(time.Time{})
		go func() { _, _ = a.Write([]byte("after")) }()
		p := make([]byte, 5)
		if _, err := io.ReadFull(r, p); err != nil || string(p) != "after" {
			t.Fatalf("read after the deadline was lifted: %q, %v", p, err)
		}
	})
	t.Run("closed while reading", func(t *testing.T) {
		_, b := tcpPair(t)
		r := newRawTCP(b)
		done := make(chan error, 1)
		go func() { _, err := r.Read(make([]byte, 10)); done <- err }()
		time.Sleep(20 * time.Millisecond)
		_ = b.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read of a closed connection: %v", err)
		}
		if _, err := r.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write to a closed connection: %v", err)
		}
	})
	t.Run("peer closes: EOF", func(t *testing.T) {
		a, b := tcpPair(t)
		_, _ = a.Write([]byte("last"))
		_ = a.Close()
		got, err := io.ReadAll(newRawTCP(b))
		if err != nil || string(got) != "last" {
			t.Fatalf("read to the end: %q, %v", got, err)
		}
	})
	t.Run("peer resets", func(t *testing.T) {
		a, b := tcpPair(t)
		_ = a.SetLinger(0)
		_ = a.Close()
		r := newRawTCP(b)
		_, err := r.Read(make([]byte, 10))
		var oe *net.OpError
		if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("read after a reset: %v", err)
		}
		var werr error
		for i := 0; i < 100 && werr == nil; i++ {
			_, werr = r.Write(make([]byte, 1024))
		}
		if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) {
			t.Fatalf("write after a reset: %v", werr)
		}
	})
}

// Bytes a sniffer read ahead are handed over before the socket's.
func TestRecordBatcherHandsSniffedBytesFirst(t *testing.T) {
	a, b := tcpPair(t)
	_, _ = a.Write([]byte("sniffed|"))
	br := bufio.NewReaderSize(b, 1024)
	if _, err := br.Peek(8); err != nil {
		t.Fatal(err)
	}
	rb := newRecordBatcher(&bufferedConn{Conn: b, r: br})
	if rb.raw == nil {
		t.Fatal("no raw I/O under a sniffed TCP connection")
	}
	go func() { _, _ = a.Write([]byte("rest")); _ = a.Close() }()
	got, err := io.ReadAll(rb)
	if err != nil || string(got) != "sniffed|rest" {
		t.Fatalf("read: %q, %v", got, err)
	}
}

// TestRawTCPAllocatesNothing: a read or a write is a system call and nothing else (the data path
// makes several per request in each process).
func TestRawTCPAllocatesNothing(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := newRawTCP(a), newRawTCP(b)
	out, in := make([]byte, 512), make([]byte, 512)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := ra.Write(out); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rb, in); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per write and read", allocs)
	}
}
