package tunnel

import "syscall"

// relayUpstreamRcvBuf bounds the socket receive buffer of the agent's relay connections to its
// kube-apiserver (the kernel doubles it for its own accounting; the window it offers is about
// this). Those connections are fast (the member's own network) and feed a slow one (the tunnel
// across the WAN): whatever the kube-apiserver writes ahead of what the WAN can take waits in this
// buffer, and a small response of another stream waits behind it. Left to autotuning the buffer
// grows to megabytes during a bulk response, which on a 100 Mbit/s link is a queue of hundreds of
// milliseconds in front of every other request of the connection, beyond the one TCP has on the
// WAN itself (what a direct client would see). 128 KiB still carries gigabytes a second at a LAN's
// round-trip time.
const relayUpstreamRcvBuf = 128 << 10

// boundRcvBuf sets a socket's receive buffer before it connects (so the window scale the SYN
// offers matches it).
func boundRcvBuf(bytes int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, bytes)
		}); err != nil {
			return err
		}
		return serr
	}
}
