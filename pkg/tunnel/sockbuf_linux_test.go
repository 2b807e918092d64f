package tunnel

import (
	"net"
	"syscall"
	"testing"
)

// TestKubeRelayDialerBoundsReceiveBuffer: the agent's relay connections to its kube-apiserver
// keep a small receive buffer (no queue of megabytes between the kube-apiserver and a slow
// tunnel), while other connections keep the kernel's autotuning.
func TestKubeRelayDialerBoundsReceiveBuffer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		ln.Close()
		for c := range accepted {
			c.Close()
		}
	}()
	rcvbuf := func(c net.Conn) int {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var serr error
		if err := rc.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF) }); err != nil || serr != nil {
			t.Fatal(err, serr)
		}
		return v
	}
	c, err := kubeRelayDialer().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := rcvbuf(c); got != 2*relayUpstreamRcvBuf { // the kernel doubles what it is given
		t.Fatalf("relay connection SO_RCVBUF %d, want %d", got, 2*relayUpstreamRcvBuf)
	}
	plain, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if got := rcvbuf(plain); got == 2*relayUpstreamRcvBuf {
		t.Fatalf("a plain connection has the relay's SO_RCVBUF %d too", got)
	}
}
