package tunnel

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync"
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
	once    sync.Once
}

func newSniffListener(l net.Listener, cfg *tls.Config, timeout time.Duration) net.Listener {
	s := &sniffListener{Listener: l, cfg: cfg, timeout: timeout, conns: make(chan net.Conn), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *sniffListener) loop() {
	var delay time.Duration
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			if isTemporary(err) {
				// Out of file descriptors (EMFILE) and the like: back off and keep accepting, as
				// net/http's Server.Serve does (5 ms doubling up to 1 s).
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-s.done:
					t.Stop()
					return
				}
				continue
			}
			s.fail(err)
			return
		}
		delay = 0
		go s.classify(c)
	}
}

// fail ends the listener with err (once).
func (s *sniffListener) fail(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.done)
	})
}

// isTemporary reports an Accept error after which the listener is still usable: what net/http
// retries (net.Error Temporary, which covers EMFILE, ENFILE, ECONNABORTED...), never a closed
// listener.
func isTemporary(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var ne interface{ Temporary() bool }
	return errors.As(err, &ne) && ne.Temporary()
}

// Close closes the underlying listener and ends Accept.
func (s *sniffListener) Close() error {
	err := s.Listener.Close()
	s.fail(net.ErrClosed)
	return err
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
		out = tls.Server(newRecordBatcher(out), s.cfg) // tlsBatched once it is a session
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
