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

// A batched large write and small writes from other goroutines on one TLS connection: every
// record reaches the peer in the order crypto/tls numbered it (a record that overtook a batch on
// the socket would fail the peer's decryption), and every byte arrives.
func TestBatchedTLSConcurrentWritesKeepRecordOrder(t *testing.T) {
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := NewRenewingCert(ca, "x", []string{"x"}, nil, ServingValidity)
	if err != nil {
		t.Fatal(err)
	}
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
