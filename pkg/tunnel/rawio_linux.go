package tunnel

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawTCP does a TCP connection's reads and writes as raw system calls on its non-blocking socket,
// still through the runtime's poller (syscall.RawConn: deadlines, Close and waiting for the
// socket are net's own). A read or write of a non-blocking socket never blocks, and a raw call
// skips what the runtime does around a system call that might: when every P was idle, as in a
// tunnel process between two requests, the first such call of a wake-up wakes the runtime's
// sysmon thread, which sleeps 20 µs and goes back to sleep (two futex calls, a nanosleep and three
// context switches on the other CPU, about a fifth of the proxy's and the agent's CPU per small
// GET in perf(1) profiles, runtime.sysmon and entersyscallWakeSysmon).
type rawTCP struct {
	c  net.Conn
	rc syscall.RawConn
	// One call of each direction at a time (net.Conn allows concurrent calls): its buffer and
	// result live here, and its function value is made once, so a call allocates nothing.
	rmu, wmu sync.Mutex
	rd, wr   rawCall
}

// rawCall is one direction's system call as RawConn.Read/Write runs it: p in, n and errno out.
type rawCall struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
	now   func(fd uintptr) bool // read's fn for readNow: one attempt, never waits
}

// newRawTCP returns nil for a connection that is not a TCP connection.
func newRawTCP(c net.Conn) *rawTCP {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawTCP{c: c, rc: rc}
	r.rd.fn, r.wr.fn = r.rd.read, r.wr.write
	r.rd.now = func(fd uintptr) bool { r.rd.read(fd); return true }
	return r
}

// read is one read(2): done unless the socket has nothing yet (the poller then waits).
func (x *rawCall) read(fd uintptr) bool {
	for {
		r1, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&x.p[0])), uintptr(len(x.p)))
		if e == syscall.EINTR {
			continue
		}
		x.n, x.errno = int(r1), e
		return e != syscall.EAGAIN
	}
}

// write writes the rest of p: done when all of it is written or on an error; not done while the
// socket takes no more (the poller then waits).
func (x *rawCall) write(fd uintptr) bool {
	for x.n < len(x.p) {
		rest := x.p[x.n:]
		r1, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			x.n += int(r1)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			x.errno = e
			return true
		}
	}
	return true
}

func (r *rawTCP) Read(p []byte) (int, error) { return r.read(p, r.rd.fn, true) }

// readNow reads what the socket holds now, without waiting: 0 and no error when it holds nothing.
func (r *rawTCP) readNow(p []byte) (int, error) { return r.read(p, r.rd.now, false) }

// read runs fn (rawCall.read, or its one attempt for readNow) under RawConn.Read. Without wait a
// deadline or a close reads nothing and is left for the next Read to report.
func (r *rawTCP) read(p []byte, fn func(uintptr) bool, wait bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rmu.Lock()
	r.rd.p, r.rd.n, r.rd.errno = p, 0, 0
	err := r.rc.Read(fn)
	n, errno := r.rd.n, r.rd.errno
	r.rd.p = nil
	r.rmu.Unlock()
	switch {
	case err != nil && !wait:
		return 0, nil
	case err != nil:
		return 0, r.opError("read", err)
	case errno == syscall.EAGAIN: // readNow's only: Read's fn waits instead
		return 0, nil
	case errno != 0:
		return 0, r.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p within one RawConn.Write, which holds the connection's write lock: no
// other write comes between two parts of p.
func (r *rawTCP) Write(p []byte) (int, error) {
	r.wmu.Lock()
	r.wr.p, r.wr.n, r.wr.errno = p, 0, 0
	err := r.rc.Write(r.wr.fn)
	nn, errno := r.wr.n, r.wr.errno
	r.wr.p = nil
	r.wmu.Unlock()
	switch {
	case err != nil:
		return nn, r.opError("write", err)
	case errno != 0:
		return nn, r.opError("write", os.NewSyscallError("write", errno))
	}
	return nn, nil
}

// opError wraps an error as net's own Read and Write do (net.OpError: Timeout, net.ErrClosed).
func (r *rawTCP) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: err}
}
