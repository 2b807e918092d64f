//go:build e2e

package e2e

import (
	"net"
	"net/url"
	"os"
	"os/exec"
	"testing"

	"github.com/ks-mc/ks-mc/test/sandbox"
)

// requireIsolation skips unless this machine can build network namespaces (root, iproute2, nftables).
func requireIsolation(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network isolation needs root")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("network isolation needs %s (make host-deps installs nftables)", bin)
		}
	}
}

// TestSandboxIsolation: an isolated member can dial the host, the host cannot dial the member, and
// this machine (the operator) reaches both.
func TestSandboxIsolation(t *testing.T) {
	requireIsolation(t)
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1"}, Isolated: []string{"member1"}})
	host, member := s.Cluster("host"), s.Cluster("member1")
	hostAddr, memberAddr := hostPort(t, host.Server), hostPort(t, member.Server)

	for _, c := range []*sandbox.Cluster{host, member} {
		if r := kubectl(t, s, "--context", c.Name, "get", "ns", "kube-system"); r.code != 0 {
			t.Fatalf("operator cannot reach %s: %s", c.Name, r)
		}
	}
	if err := dialFrom(host.Netns, memberAddr); err == nil {
		t.Fatalf("the host's namespace reached the isolated member's apiserver %s", memberAddr)
	}
	if err := dialFrom(member.Netns, hostAddr); err != nil {
		t.Fatalf("the member cannot dial the host's apiserver %s: %v", hostAddr, err)
	}
}

func hostPort(t *testing.T, server string) string {
	t.Helper()
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// dialFrom opens a TCP connection to addr from inside network namespace ns.
func dialFrom(ns, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	return exec.Command("ip", "netns", "exec", ns, "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port).Run()
}
