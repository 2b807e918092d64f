package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Long-lived responses of the agent's stream server (agent_serve.go): watches and other unbounded
// responses, whose stream is watched so that the caller going away ends the upstream request, and
// upgrades, spliced both ways.

// watch copies an unbounded response (a watch, any response without a length) in a goroutine of
// its own while another one waits on the stream: the caller going away (end of stream) cancels
// the upstream request; a byte arriving is the next request, served by that goroutine once the
// response ends. Both goroutines
// are new, so an idle watch holds two small stacks, not the one that read and forwarded the
// request: the calling goroutine returns stepHandedOff and ends.
func (c *agentConn) watch(w *respWriter, resp *http.Response, cancel context.CancelFunc, long bool) step {
	bounded := resp.ContentLength >= 0
	if !bounded {
		if err := w.writeHead(resp); err != nil {
			_ = resp.Body.Close()
			cancel()
			return stepStop
		}
	}
	result := make(chan bool, 1)
	go func() {
		var ok bool
		if bounded {
			ok = w.writeResponse(resp, long)
		} else {
			ok = w.copyBody(resp, long)
		}
		if !ok || w.close || !c.setIdle(true) {
			// The stream ends with the response: cut short (the caller sees it unterminated), or
			// Connection: close, or keep-alive went off meanwhile. Closing it ends the wait below.
			c.closeConn()
		}
		result <- ok
	}()
	if c.br != nil && c.br.Buffered() > 0 {
		// Pipelined bytes: nothing to watch on the stream until the response ends.
		ok := <-result
		cancel()
		if !ok || w.close || !c.setIdle(false) {
			return stepStop
		}
		return stepNext
	}
	c.release()
	shrink(c.conn)
	go func() {
		n, err := c.conn.Read(c.one[:])
		if n == 0 || err != nil {
			// The caller went away: end the upstream request (a watch's context; closing the
			// body ends the others: an HTTP/2 stream reset, an HTTP/1.1 connection closed).
			cancel()
			_ = resp.Body.Close()
			c.closeConn() // a copy blocked in a write to the stream (window full) ends too
			<-result
			c.end()
			return
		}
		ok := <-result
		cancel()
		if !ok || w.close || !c.setIdle(false) {
			c.end()
			return
		}
		c.pre.pre, c.has = c.one[:1], true
		if c.loop() != stepHandedOff {
			c.end()
		}
	}()
	return stepHandedOff
}

// upgrade writes the 101 and splices the stream and the upstream connection until either ends.
func (c *agentConn) upgrade(w *respWriter, req *http.Request, resp *http.Response, upType string, cancel context.CancelFunc) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	resUp := resp.Header.Get("Upgrade")
	switch {
	case !ok:
		_ = resp.Body.Close()
		w.writeStatus(http.StatusBadGateway, "ServiceUnavailable", "ks-mc agent: upgrade: 101 switching protocols response with non-writable body")
		return
	case !isPrintASCII(resUp) || !strings.EqualFold(resUp, upType):
		_ = back.Close()
		w.writeStatus(http.StatusBadGateway, "ServiceUnavailable",
			fmt.Sprintf("ks-mc agent: upgrade: backend tried to switch protocol %q when %q was requested", resUp, upType))
		return
	}
	defer back.Close()
	if err := w.writeUpgradeHead(resp); err != nil {
		return
	}
	var src io.Reader = c.conn
	if c.br != nil && c.br.Buffered() > 0 {
		src = c.br // bytes of the new protocol that came with the request
	}
	done := make(chan struct{})
	go func() {
		// upstream → stream; at its end the stream is half-closed (a yamux Close sends FIN and
		// reads go on), so the caller sees the end and closes its side.
		_ = adaptiveCopy(c.conn, back)
		_ = c.conn.Close()
		close(done)
	}()
	// stream → upstream, in the loop goroutine. At the caller's end (EOF), an upstream that can
	// half-close gets it and finishes its side; otherwise both close.
	err := adaptiveCopy(back, src)
	if cw, ok := back.(interface{ CloseWrite() error }); ok && errors.Is(err, io.EOF) {
		_ = cw.CloseWrite()
		<-done
		return
	}
	cancel()
	_ = back.Close()
	<-done
}
