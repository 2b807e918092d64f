package kubesphere

import (
	"fmt"
	"strings"
)

// Tunnel names which agent/proxy pair connects a member: the agent a member runs, the proxy a host
// runs in Deployment tower, and the protocol of a connected session.
type Tunnel string

const (
	// TunnelTower is KubeSphere's own Tower.
	TunnelTower Tunnel = "tower"
	// TunnelKsMc is the proxy and agent bundled in the ks-mc binary.
	TunnelKsMc Tunnel = "ks-mc"
	// TunnelAuto picks from what the host runs.
	TunnelAuto Tunnel = "auto"
)

// ParseTunnel accepts tower, ks-mc (or ksmc) and auto ("" = auto).
func ParseTunnel(s string) (Tunnel, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return TunnelAuto, nil
	case "tower":
		return TunnelTower, nil
	case "ks-mc", "ksmc":
		return TunnelKsMc, nil
	}
	return "", fmt.Errorf("invalid tunnel %q: use tower, ks-mc or auto", s)
}
