package tunnel

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// The agent's connection to the proxy: TCP, through an HTTP CONNECT proxy when the environment
// names one, and the listener its streams are served from.

// dial opens the TCP connection to the proxy, through an HTTP CONNECT proxy when the environment
// names one.
func (a *Agent) dial(ctx context.Context) (net.Conn, error) {
	if a.cfg.Dial != nil {
		return a.cfg.Dial(ctx)
	}
	addr := a.proxyURL.Host
	if a.proxyURL.Port() == "" {
		port := "80"
		if a.proxyURL.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(a.proxyURL.Hostname(), port)
	}
	var d net.Dialer
	via, err := http.ProxyFromEnvironment(&http.Request{URL: a.proxyURL})
	if err != nil || via == nil {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("dial proxy %s: %w", addr, err)
		}
		return c, nil
	}
	return dialConnect(ctx, &d, via, addr)
}

// dialConnect tunnels to addr through an HTTP proxy with CONNECT.
func dialConnect(ctx context.Context, d *net.Dialer, via *url.URL, addr string) (net.Conn, error) {
	viaAddr := via.Host
	if via.Port() == "" {
		viaAddr = net.JoinHostPort(via.Hostname(), "80")
	}
	c, err := d.DialContext(ctx, "tcp", viaAddr)
	if err != nil {
		return nil, fmt.Errorf("dial HTTP proxy %s: %w", viaAddr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if u := via.User; u != nil {
		p, _ := u.Password()
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+p)) + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("CONNECT via %s: %w", viaAddr, err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("CONNECT via %s: %w", viaAddr, err)
	}
	if resp.StatusCode != http.StatusOK {
		_ = c.Close()
		return nil, fmt.Errorf("CONNECT %s via %s: %s", addr, viaAddr, resp.Status)
	}
	_ = c.SetDeadline(time.Time{})
	return &bufferedConn{Conn: c, r: br}, nil
}

// connListener is a net.Listener fed by push (the accepted, header-checked streams; the kube
// listener's connections for its http.Server).
type connListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
	addr   net.Addr // nil: tunnelAddr
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr {
	if l.addr != nil {
		return l.addr
	}
	return tunnelAddr{}
}

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "ksmc-tunnel" }
func (tunnelAddr) String() string  { return "ksmc-tunnel" }
