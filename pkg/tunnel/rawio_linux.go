package tunnel

import (
	"io"
	"net"
	"os"
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
	return &rawTCP{c: c, rc: rc}
}

func (r *rawTCP) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			r1, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			n, errno = int(r1), e
			return e != syscall.EAGAIN
		}
	})
	switch {
	case err != nil:
		return 0, r.opError("read", err)
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
	var nn int
	var errno syscall.Errno
	err := r.rc.Write(func(fd uintptr) bool {
		for nn < len(p) {
			rest := p[nn:]
			r1, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
			switch e {
			case 0:
				nn += int(r1)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // the poller waits until the socket takes more
			default:
				errno = e
				return true
			}
		}
		return true
	})
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
