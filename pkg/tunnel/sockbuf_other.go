//go:build !linux

package tunnel

import "syscall"

// relayUpstreamRcvBuf: see sockbuf_linux.go; elsewhere the platform's autotuning is left alone.
const relayUpstreamRcvBuf = 0

func boundRcvBuf(int) func(network, address string, c syscall.RawConn) error { return nil }
