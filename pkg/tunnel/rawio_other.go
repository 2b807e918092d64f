//go:build !linux

package tunnel

import "net"

// rawTCP: see rawio_linux.go; elsewhere a connection's own Read and Write are used.
type rawTCP struct{ net.Conn }

func newRawTCP(net.Conn) *rawTCP { return nil }

func (r *rawTCP) readNow([]byte) (int, error) { return 0, nil }
