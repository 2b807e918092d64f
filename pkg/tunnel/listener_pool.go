package tunnel

import (
	"net"
	"sync"
	"time"
)

// Idle stream pool of the kube listener's forwarder (see listener_client.go).
//
// An idle stream has no reader: nothing watches it while it waits. Before it is reused, and on
// each sweep, a read with an expired deadline tells whether the agent closed it: a yamux stream
// (and a Tower session's pipe) answers such a read with a timeout while it is open and idle, with
// EOF (or a reset) once the peer closed it, and with bytes the peer sent unasked. Only the
// timeout keeps it.
const (
	// listenerMaxIdleStreams caps the idle streams per auth mode (the old Transport's MaxIdleConns).
	listenerMaxIdleStreams = 1024
	// listenerIdleTimeout closes a stream idle for that long (the old Transport's IdleConnTimeout).
	listenerIdleTimeout = 90 * time.Second
	// The pool sweeps while streams are idle, closing the ones the agent closed (a draining agent
	// waits for its streams to end) or that idled out: every 100 ms, or every millisecond per
	// idle stream when there are more than 100 (at most about 1,000 checks a second), and at
	// least once a second.
	minSweepInterval = 100 * time.Millisecond
	maxSweepInterval = time.Second
)

// sweepInterval is the wait before the next sweep with n idle streams.
func sweepInterval(n int) time.Duration {
	return min(max(time.Duration(n)*time.Millisecond, minSweepInterval), maxSweepInterval)
}

// aLongTimeAgo is an expired deadline: a read with it returns at once.
var aLongTimeAgo = time.Unix(1, 0)

type idleStream struct {
	c     net.Conn
	since time.Time
}

// streamPool keeps idle streams of one auth mode, most recently used last (LIFO).
type streamPool struct {
	mu      sync.Mutex
	idle    []idleStream
	max     int
	timeout time.Duration
	closed  bool
	sweep   *time.Timer // armed while idle streams wait
}

func newStreamPool(max int, timeout time.Duration) *streamPool {
	return &streamPool{max: max, timeout: timeout}
}

// get returns an idle stream that is still open, or nil.
func (p *streamPool) get() net.Conn {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return nil
		}
		s := p.idle[n-1]
		p.idle[n-1] = idleStream{}
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if time.Since(s.since) < p.timeout && streamIdleAlive(s.c) {
			return s.c
		}
		_ = s.c.Close()
	}
}

// put keeps c for reuse; it closes c when the pool is closed. A full pool drops its oldest stream.
func (p *streamPool) put(c net.Conn) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	var evict net.Conn
	if len(p.idle) >= p.max {
		evict = p.idle[0].c
		copy(p.idle, p.idle[1:])
		p.idle[len(p.idle)-1] = idleStream{}
		p.idle = p.idle[:len(p.idle)-1]
	}
	p.idle = append(p.idle, idleStream{c: c, since: time.Now()})
	if p.sweep == nil {
		p.sweep = time.AfterFunc(sweepInterval(len(p.idle)), p.sweepIdle)
	}
	p.mu.Unlock()
	if evict != nil {
		_ = evict.Close()
	}
}

// sweepIdle closes the streams that idled out or that the agent closed, and re-arms itself while
// streams stay idle.
func (p *streamPool) sweepIdle() {
	var dead []net.Conn
	p.mu.Lock()
	p.sweep = nil
	if p.closed {
		p.mu.Unlock()
		return
	}
	keep := p.idle[:0]
	for _, s := range p.idle {
		if time.Since(s.since) >= p.timeout || !streamIdleAlive(s.c) {
			dead = append(dead, s.c)
			continue
		}
		keep = append(keep, s)
	}
	for i := len(keep); i < len(p.idle); i++ {
		p.idle[i] = idleStream{}
	}
	p.idle = keep
	if len(p.idle) > 0 {
		p.sweep = time.AfterFunc(sweepInterval(len(p.idle)), p.sweepIdle)
	}
	p.mu.Unlock()
	for _, c := range dead {
		_ = c.Close()
	}
}

// close closes every idle stream; streams handed back later are closed too.
func (p *streamPool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	if p.sweep != nil {
		p.sweep.Stop()
		p.sweep = nil
	}
	p.mu.Unlock()
	for _, s := range idle {
		_ = s.c.Close()
	}
}

// len is the number of idle streams (tests).
func (p *streamPool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// streamIdleAlive reports whether an idle stream is still open and silent: a read with an
// expired deadline must time out. EOF or a reset (the agent closed it) and unsolicited bytes (a
// response nobody asked for) mean it cannot carry another request.
func streamIdleAlive(c net.Conn) bool {
	if c.SetReadDeadline(aLongTimeAgo) != nil {
		return false
	}
	var b [1]byte
	n, err := c.Read(b[:])
	if c.SetReadDeadline(time.Time{}) != nil || n > 0 {
		return false
	}
	te, ok := err.(interface{ Timeout() bool })
	return ok && te.Timeout()
}
