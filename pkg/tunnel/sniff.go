package tunnel

import (
	"bufio"
	"crypto/tls"
	"net"
	"time"
)

// sniffListener serves TLS and plain HTTP on one port: a connection whose first byte is a TLS
// handshake record (0x16) is wrapped in tls.Server, any other is served as is.
type sniffListener struct {
	net.Listener
	cfg     *tls.Config
	timeout time.Duration
	conns   chan net.Conn
	done    chan struct{} // closed when the underlying listener failed or was closed
	err     error         // set before done is closed
}

func newSniffListener(l net.Listener, cfg *tls.Config, timeout time.Duration) net.Listener {
	s := &sniffListener{Listener: l, cfg: cfg, timeout: timeout, conns: make(chan net.Conn), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *sniffListener) loop() {
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			s.err = err
			close(s.done)
			return
		}
		go s.classify(c)
	}
}

func (s *sniffListener) classify(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(s.timeout))
	br := bufio.NewReaderSize(c, 1024)
	b, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		_ = c.Close()
		return
	}
	var out net.Conn = &bufferedConn{Conn: c, r: br}
	if b[0] == 0x16 {
		out = tls.Server(out, s.cfg)
	}
	select {
	case s.conns <- out:
	case <-s.done:
		_ = c.Close()
	}
}

func (s *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, s.err
	}
}
