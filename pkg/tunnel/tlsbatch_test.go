package tunnel

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// testServing is a CA and a serving certificate for "x" signed by it.
func testServing(t *testing.T) (*CA, *RenewingCert) {
	t.Helper()
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := NewRenewingCert(ca, "x", []string{"x"}, nil, ServingValidity)
	if err != nil {
		t.Fatal(err)
	}
	return ca, rc
}

// A batched large write and small writes from other goroutines on one TLS connection: every
// record reaches the peer in the order crypto/tls numbered it (a record that overtook a batch on
// the socket would fail the peer's decryption), and every byte arrives.
func TestBatchedTLSConcurrentWritesKeepRecordOrder(t *testing.T) {
	ca, rc := testServing(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const bigs, smalls, big, small = 300, 3000, 64 << 10, 100
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		sc, _ := tlsServerBatched(c, rc.ServerTLS(nil), true)
		n, err := io.Copy(io.Discard, sc)
		if err != nil {
			t.Errorf("server read: %v", err)
		}
		got <- n
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc, bc := tlsClientBatched(c, &tls.Config{RootCAs: ca.Pool(), ServerName: "x"}, false)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	write := func(n, size int) {
		defer wg.Done()
		p := bytes.Repeat([]byte{'z'}, size)
		for i := 0; i < n; i++ {
			if _, err := bc.Write(p); err != nil {
				t.Errorf("write: %v", err)
				return
			}
		}
	}
	wg.Add(3)
	go write(bigs, big)
	go write(smalls, small)
	go write(smalls, small)
	wg.Wait()
	_ = tc.CloseWrite()
	select {
	case n := <-got:
		if want := int64(bigs*big + 2*smalls*small); n != want {
			t.Fatalf("the server read %d bytes, want %d", n, want)
		}
	case <-time.After(time.Minute):
		t.Fatal("the server never read to the end")
	}
}

// peekRecord reads what the socket holds without waiting: false while nothing has come (at once,
// not after a wait), true once a whole record is in, which the next Read then returns; a passed
// deadline makes it false and leaves no error behind; the peer's close reaches the next Read.
func TestBatchedTLSPeekRecord(t *testing.T) {
	ca, rc := testServing(t)
	a, b := tcpPair(t)
	sc, bs := tlsServerBatched(b, rc.ServerTLS(nil), true)
	cc := tls.Client(a, &tls.Config{RootCAs: ca.Pool(), ServerName: "x"})
	hs := make(chan error, 1)
	go func() { hs <- sc.Handshake() }()
	if err := cc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	read := func(want string) {
		t.Helper()
		n, err := bs.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
		}
	}
	waitPeek := func() {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !bs.peekRecord(); {
			if time.Now().After(deadline) {
				t.Fatal("peekRecord never saw the record")
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := cc.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	read("one")
	if bs.peekRecord() {
		t.Fatal("peekRecord true with nothing sent")
	}
	if _, err := cc.Write([]byte("two")); err != nil {
		t.Fatal(err)
	}
	waitPeek()
	if !bs.recordReady() {
		t.Fatal("recordReady false after peekRecord true")
	}
	read("two")

	_ = b.SetReadDeadline(time.Now().Add(-time.Second))
	if bs.peekRecord() {
		t.Fatal("peekRecord true past the deadline")
	}
	_ = b.SetReadDeadline(time.Time{})
	if _, err := cc.Write([]byte("three")); err != nil {
		t.Fatal(err)
	}
	waitPeek()
	read("three")

	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			bs.peekRecord()
			if bs.under.rerr != nil || bs.under.rend > bs.under.rpos {
				break
			}
		}
		_, err := bs.Read(buf)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a read after the peer's close returned no error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a read after the peer's close hangs")
	}
}

// Without raw I/O (a pipe) peekRecord reads nothing and never waits.
func TestBatchedTLSPeekRecordWithoutRawIO(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	_, bs := tlsServerBatched(p, &tls.Config{}, true)
	if bs.peekRecord() {
		t.Fatal("peekRecord true on a pipe")
	}
}
