package main

import (
	"errors"
	"net"
	"sync"
	"time"
)

// relay is the WAN link of the bench: a TCP relay that delays every byte by delay in each
// direction and paces each direction at rate bytes/s, holding at most about one bandwidth-delay
// product in flight so that the sender feels the link (back-pressure, not an unbounded buffer).
// The kernel of the bench machine may lack sch_netem; the relay needs nothing from it. Packet
// loss, when asked for, is added by nftables on the sandbox's router (see wanLoss).
type relay struct {
	ln     net.Listener
	target string
	delay  time.Duration
	rate   float64 // bytes per second
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newRelay(listen, target string, delay time.Duration, rateBits float64) (*relay, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, target: target, delay: delay, rate: rateBits / 8, conns: map[net.Conn]struct{}{}}
	go r.accept()
	return r, nil
}

func (r *relay) Addr() string { return r.ln.Addr().String() }

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) Close() {
	r.mu.Lock()
	r.closed = true
	conns := r.conns
	r.conns = map[net.Conn]struct{}{}
	r.mu.Unlock()
	_ = r.ln.Close()
	for c := range conns {
		_ = c.Close()
	}
}

func (r *relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		go r.serve(c)
	}
}

func (r *relay) serve(c net.Conn) {
	u, err := net.Dial("tcp", r.target)
	if err != nil {
		_ = c.Close()
		return
	}
	if !r.track(c) || !r.track(u) {
		_ = c.Close()
		_ = u.Close()
		return
	}
	done := make(chan struct{}, 2)
	go func() { r.pipe(u, c); done <- struct{}{} }()
	go func() { r.pipe(c, u); done <- struct{}{} }()
	<-done
	_ = c.Close()
	_ = u.Close()
	<-done
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, u)
	r.mu.Unlock()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst: each chunk leaves src's side when the link has sent the previous ones
// (rate) and reaches dst delay later.
func (r *relay) pipe(dst, src net.Conn) {
	// About two bandwidth-delay products of 16 KiB chunks in flight.
	inflight := int(2*r.rate*r.delay.Seconds())/(16<<10) + 4
	q := make(chan chunk, inflight)
	go func() {
		defer close(q)
		var free time.Time // when the link finishes sending what it holds
		for {
			b := make([]byte, 16<<10)
			n, err := src.Read(b)
			if n > 0 {
				now := time.Now()
				if free.Before(now) {
					free = now
				}
				free = free.Add(time.Duration(float64(n) / r.rate * float64(time.Second)))
				q <- chunk{b: b[:n], due: free.Add(r.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		if d := time.Until(ch.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(ch.b); err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	for ch := range q { // drain, so that the reader ends with src
		_ = ch
	}
}
