//go:build linux && (amd64 || arm64)

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// nfLink delays and paces the packets of one direction of the WAN link in the kernel's forwarding
// path: iptables sends them to an NFQUEUE of the sandbox router's namespace, and the bench gives
// each its verdict (accept) when the link would deliver it: after the packets before it have left
// at the link's rate, plus the one-way delay. Unlike the relay (relay.go), the TCP connections of
// both paths then run end to end over the delayed, lossy link, as on a real WAN: their loss
// recovery sees the RTT. The machine's kernel has no sch_netem; NFQUEUE needs nothing but
// CONFIG_NETFILTER_NETLINK_QUEUE and the xt NFQUEUE target.
type nfLink struct {
	fd    int
	num   uint16
	delay time.Duration
	rate  float64       // bytes per second
	limit time.Duration // most a packet may wait for the link (a router's buffer): tail drop beyond

	wmu   sync.Mutex // verdicts are written by the reader (drops) and the scheduler (accepts)
	free  time.Time  // when the link has sent what it holds (reader only)
	q     chan heldPacket
	done  chan struct{}
	wg    sync.WaitGroup
	drops int // tail drops (reader only)
	// trace, with KSMC_WAN_PACKETS=FILE set, gets a line per packet: queue, arrival (Unix ns),
	// IP length (a diagnostic: how a figure's traffic is cut into packets).
	trace *os.File
}

type heldPacket struct {
	id  uint32
	due time.Time
}

// sysSetns is setns(2) (the syscall package has no wrapper).
var sysSetns uintptr = map[string]uintptr{"amd64": 308, "arm64": 268}[runtime.GOARCH]

// Netlink and nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue    = 3
	nfqnlMsgPacket     = 0
	nfqnlMsgVerdict    = 1
	nfqnlMsgConfig     = 2
	nfqnlMsgVerdictBat = 3
	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxlen = 3
	nfqaPacketHdr      = 1
	nfqaVerdictHdr     = 2
	nfqaPayload        = 10
	nfqnlCfgCmdBind    = 1
	nfqnlCopyPacket    = 2
	nfDrop             = 0
	nfAccept           = 1
)

// openNFLink binds NFQUEUE num in the network namespace netns (a name under /run/netns).
func openNFLink(netns string, num uint16, delay time.Duration, rateBits float64, limit time.Duration) (*nfLink, error) {
	fd, err := netlinkSocketIn(netns)
	if err != nil {
		return nil, err
	}
	l := &nfLink{fd: fd, num: num, delay: delay, rate: rateBits / 8, limit: limit,
		q: make(chan heldPacket, 1<<16), done: make(chan struct{})}
	if f := os.Getenv("KSMC_WAN_PACKETS"); f != "" {
		if l.trace, err = os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			syscall.Close(fd)
			return nil, err
		}
	}
	// Bind the queue, copy 40 bytes of each packet (its IPv4 header: the length), hold up to 64k.
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, syscall.AF_INET}
	params := make([]byte, 5)
	binary.BigEndian.PutUint32(params, 40)
	params[4] = nfqnlCopyPacket
	maxlen := binary.BigEndian.AppendUint32(nil, 1<<16)
	for _, a := range [][]byte{nlattr(nfqaCfgCmd, cmd), nlattr(nfqaCfgParams, params), nlattr(nfqaCfgQueueMaxlen, maxlen)} {
		if err := l.request(nfqnlMsgConfig, syscall.NLM_F_ACK, a); err != nil {
			syscall.Close(fd)
			return nil, fmt.Errorf("nfqueue %d: %w", num, err)
		}
	}
	// The reader wakes up every 200 ms to see whether the link is closed.
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &syscall.Timeval{Usec: 200000})
	l.wg.Add(2)
	go l.read()
	go l.schedule()
	return l, nil
}

// netlinkSocketIn opens a NETLINK_NETFILTER socket in another network namespace (a socket stays
// in the namespace it was created in).
func netlinkSocketIn(netns string) (int, error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + netns)
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer target.Close()
	if _, _, e := syscall.RawSyscall(sysSetns, target.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("setns %s: %w", netns, e)
	}
	fd, serr := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_NETFILTER)
	if serr == nil {
		serr = syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK})
		if serr == nil {
			_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 8<<20)
		}
	}
	if _, _, e := syscall.RawSyscall(sysSetns, orig.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		// The thread stays locked (and ends with its goroutine): it is in the wrong namespace.
		if fd >= 0 {
			syscall.Close(fd)
		}
		return -1, fmt.Errorf("setns back: %w", e)
	}
	runtime.UnlockOSThread()
	if serr != nil {
		if fd >= 0 {
			syscall.Close(fd)
		}
		return -1, fmt.Errorf("netfilter netlink socket: %w", serr)
	}
	return fd, nil
}

func nlattr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b, uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// message builds an nfnetlink message of the queue subsystem for this queue.
func (l *nfLink) message(typ uint16, flags uint16, attrs ...[]byte) []byte {
	n := 16 + 4
	for _, a := range attrs {
		n += len(a)
	}
	b := make([]byte, 20, n)
	binary.NativeEndian.PutUint32(b, uint32(n))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], syscall.NLM_F_REQUEST|flags)
	b[16] = syscall.AF_UNSPEC
	binary.BigEndian.PutUint16(b[18:], l.num)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

// request sends a config message and waits for its acknowledgement (before the reader runs).
func (l *nfLink) request(typ uint16, flags uint16, attrs ...[]byte) error {
	if err := syscall.Sendto(l.fd, l.message(typ, flags, attrs...), 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	n, _, err := syscall.Recvfrom(l.fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == syscall.NLMSG_ERROR && len(m.Data) >= 4 {
			if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
				return syscall.Errno(-e)
			}
		}
	}
	return nil
}

func (l *nfLink) verdict(batch bool, id uint32, v uint32) {
	h := make([]byte, 8)
	binary.BigEndian.PutUint32(h, v)
	binary.BigEndian.PutUint32(h[4:], id)
	typ := uint16(nfqnlMsgVerdict)
	if batch {
		typ = nfqnlMsgVerdictBat
	}
	l.wmu.Lock()
	_ = syscall.Sendto(l.fd, l.message(typ, 0, nlattr(nfqaVerdictHdr, h)), 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK})
	l.wmu.Unlock()
}

// read takes the queued packets and schedules each one's departure.
func (l *nfLink) read() {
	defer l.wg.Done()
	defer close(l.q)
	buf := make([]byte, 1<<20)
	for {
		n, _, err := syscall.Recvfrom(l.fd, buf, 0)
		select {
		case <-l.done:
			return
		default:
		}
		if err != nil {
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN) {
				continue
			}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysQueue<<8|nfqnlMsgPacket || len(m.Data) < 4 {
				continue
			}
			id, size, ok := packetOf(m.Data[4:])
			if !ok {
				continue
			}
			now := time.Now()
			if l.trace != nil {
				sp, dp := portsOf(m.Data[4:])
				fmt.Fprintf(l.trace, "%d\t%d\t%d\t%d\t%d\n", l.num, now.UnixNano(), size, sp, dp)
			}
			if l.free.Before(now) {
				l.free = now
			}
			if l.free.Sub(now) > l.limit {
				l.drops++
				l.verdict(false, id, nfDrop)
				continue
			}
			l.free = l.free.Add(time.Duration(float64(size) / l.rate * float64(time.Second)))
			select {
			case l.q <- heldPacket{id: id, due: l.free.Add(l.delay)}:
			default:
				l.verdict(false, id, nfDrop)
			}
		}
	}
}

// eachAttr calls fn with every attribute of a packet message (nfnetlink attributes: native-endian
// length and type, 4-byte aligned); false, and no more calls, at a malformed one.
func eachAttr(b []byte, fn func(typ uint16, data []byte)) bool {
	for len(b) >= 4 {
		alen := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & 0x3fff
		if alen < 4 || alen > len(b) {
			return false
		}
		fn(typ, b[4:alen])
		b = b[min((alen+3)&^3, len(b)):]
	}
	return true
}

// portsOf returns a TCP packet's ports from a packet message's attributes (0 when it has none).
func portsOf(b []byte) (src, dst uint16) {
	if !eachAttr(b, func(typ uint16, data []byte) {
		if typ == nfqaPayload && len(data) >= 24 && data[0]>>4 == 4 {
			if ihl := int(data[0]&0xf) * 4; len(data) >= ihl+4 {
				src, dst = binary.BigEndian.Uint16(data[ihl:]), binary.BigEndian.Uint16(data[ihl+2:])
			}
		}
	}) {
		return 0, 0
	}
	return src, dst
}

// packetOf returns the packet id and the IPv4 length from a packet message's attributes.
func packetOf(b []byte) (id uint32, size int, ok bool) {
	if !eachAttr(b, func(typ uint16, data []byte) {
		switch typ {
		case nfqaPacketHdr:
			if len(data) >= 4 {
				id, ok = binary.BigEndian.Uint32(data), true
			}
		case nfqaPayload:
			size = len(data)
			if len(data) >= 4 && data[0]>>4 == 4 {
				size = int(binary.BigEndian.Uint16(data[2:]))
			}
		}
	}) {
		return 0, 0, false
	}
	if size == 0 {
		size = 60
	}
	return id, size, ok
}

// schedule accepts the held packets in order, each when it is due (those due together in one
// batch verdict: every earlier packet has had its verdict).
func (l *nfLink) schedule() {
	defer l.wg.Done()
	for p := range l.q {
		if d := time.Until(p.due); d > 0 {
			select {
			case <-time.After(d):
			case <-l.done:
				return
			}
		}
		last := p.id
	more:
		for {
			select {
			case n, ok := <-l.q:
				if !ok {
					break more
				}
				if time.Until(n.due) > 0 {
					l.verdict(true, last, nfAccept)
					if d := time.Until(n.due); d > 0 {
						select {
						case <-time.After(d):
						case <-l.done:
							return
						}
					}
				}
				last = n.id
			default:
				break more
			}
		}
		l.verdict(true, last, nfAccept)
	}
}

// Close stops holding packets (remove the iptables rules first: packets queued after Close are
// lost); the packets still held are dropped with the socket. It returns the tail drops.
func (l *nfLink) Close() int {
	close(l.done)
	l.wg.Wait()
	syscall.Close(l.fd)
	if l.trace != nil {
		_ = l.trace.Close()
	}
	return l.drops
}
