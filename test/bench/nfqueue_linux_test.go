package main

import (
	"encoding/binary"
	"testing"
)

// attr is one netlink attribute as nfnetlink_queue sends it (native-endian header, 4-byte aligned).
func attr(typ uint16, data []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// A packet message's id, IPv4 length and TCP ports; short, truncated or malformed attributes
// give nothing rather than a panic.
func TestPacketOfAndPortsOf(t *testing.T) {
	ip := make([]byte, 40)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 1500)
	binary.BigEndian.PutUint16(ip[20:], 20022)
	binary.BigEndian.PutUint16(ip[22:], 35512)
	msg := append(attr(nfqaPacketHdr, []byte{0, 0, 0, 7, 8, 0, 0}), attr(nfqaPayload, ip)...)
	if id, size, ok := packetOf(msg); !ok || id != 7 || size != 1500 {
		t.Fatalf("packetOf: %d %d %v", id, size, ok)
	}
	if sp, dp := portsOf(msg); sp != 20022 || dp != 35512 {
		t.Fatalf("portsOf: %d %d", sp, dp)
	}
	for _, bad := range [][]byte{nil, {1}, msg[:3], msg[:len(msg)-30], {0xff, 0xff, 10, 0}, attr(nfqaPayload, ip[:10]), attr(nfqaPayload, []byte{0x4f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})} {
		packetOf(bad)
		if sp, dp := portsOf(bad); (sp != 0 || dp != 0) && len(bad) < len(msg) {
			t.Fatalf("portsOf(%x) = %d %d", bad, sp, dp)
		}
	}
}
