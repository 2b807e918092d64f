package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"time"
)

// Network isolation (Options.Isolated), for tests that need a member the host cannot dial:
//
//	root namespace (this machine: kubectl, ks-mc, tests)
//	   | veth 10.X.0.2 <-> 10.X.0.1          (10.X.0.0/16 per sandbox, X in 200..249)
//	router namespace "ksmc-<id>-rt" (ip_forward=1 inside it only; nftables filter)
//	   | veth 10.X.<n>.1 <-> 10.X.<n>.2   one per isolated cluster n, in namespace "ksmc-<id>-<name>"
//
// Every process of an isolated cluster (etcd, control plane, kwok, process-backed pods) runs inside
// its namespace and listens on 10.X.<n>.2, its node IP.
// With isolation on, every cluster runs in a namespace of its own behind the router; the router drops
// new connections towards an Isolated cluster unless they come from the root namespace (the operator's
// machine). So a host's components cannot dial an isolated member, while the member dials the host.
//
// The addresses are the project's own test hosts inside namespaces the sandbox creates; no other
// address is ever dialled.

// netPrefix is the sandbox's private /16, derived from its directory so that two isolated
// sandboxes (say a test run and the demo) do not collide: 10.200.0.0/16 … 10.249.0.0/16.
func netPrefix(s *Sandbox) string {
	sum := sha256.Sum256([]byte(s.Dir))
	return fmt.Sprintf("10.%d", 200+int(sum[0])%50)
}

func netnsName(dir, cluster string) string {
	sum := sha256.Sum256([]byte(dir))
	return "ksmc-" + hex.EncodeToString(sum[:3]) + "-" + cluster
}

func routerName(s *Sandbox) string {
	sum := sha256.Sum256([]byte(s.Dir))
	return "ksmc-" + hex.EncodeToString(sum[:3]) + "-rt"
}

// isolatedNodeIP is the address of isolated cluster index n inside its namespace.
func isolatedNodeIP(s *Sandbox, n int) string { return fmt.Sprintf("%s.%d.2", netPrefix(s), n) }

func setupNetwork(ctx context.Context, s *Sandbox, log io.Writer) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("network isolation needs nftables (apt-get install -y nftables): %w", err)
	}
	teardownNetwork(s)
	rt := routerName(s)
	netPrefix := netPrefix(s)
	rootIP := netPrefix + ".0.2"
	id := strings.TrimSuffix(strings.TrimPrefix(rt, "ksmc-"), "-rt")
	cmds := [][]string{
		{"ip", "netns", "add", rt},
		{"ip", "netns", "exec", rt, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "netns", "exec", rt, "ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "ks" + id + "r0", "type", "veth", "peer", "name", "ks" + id + "r0p", "netns", rt},
		{"ip", "addr", "add", rootIP + "/24", "dev", "ks" + id + "r0"},
		{"ip", "link", "set", "ks" + id + "r0", "up"},
		{"ip", "netns", "exec", rt, "ip", "addr", "add", netPrefix + ".0.1/24", "dev", "ks" + id + "r0p"},
		{"ip", "netns", "exec", rt, "ip", "link", "set", "ks" + id + "r0p", "up"},
	}
	var rules []string
	for _, c := range s.Clusters {
		if c.Netns == "" {
			continue
		}
		c.NodeIP = isolatedNodeIP(s, c.Index)
		in := fmt.Sprintf("ks%sc%d", id, c.Index)
		cmds = append(cmds,
			[]string{"ip", "netns", "add", c.Netns},
			[]string{"ip", "netns", "exec", c.Netns, "ip", "link", "set", "lo", "up"},
			[]string{"ip", "link", "add", in, "netns", rt, "type", "veth", "peer", "name", "eth0", "netns", c.Netns},
			[]string{"ip", "netns", "exec", rt, "ip", "addr", "add", fmt.Sprintf("%s.%d.1/24", netPrefix, c.Index), "dev", in},
			[]string{"ip", "netns", "exec", rt, "ip", "link", "set", in, "up"},
			[]string{"ip", "netns", "exec", c.Netns, "ip", "addr", "add", c.NodeIP + "/24", "dev", "eth0"},
			[]string{"ip", "netns", "exec", c.Netns, "ip", "link", "set", "eth0", "up"},
			[]string{"ip", "netns", "exec", c.Netns, "ip", "route", "add", "default", "via", fmt.Sprintf("%s.%d.1", netPrefix, c.Index)},
		)
		// New connections into an isolated cluster are dropped unless they come from the root
		// namespace (the operator's machine); replies to the cluster's own connections pass.
		if c.Isolated {
			rules = append(rules, fmt.Sprintf("oifname %q ct state new iifname != %q drop", in, "ks"+id+"r0p"))
		}
	}
	cmds = append(cmds, []string{"ip", "route", "add", netPrefix + ".0.0/16", "via", netPrefix + ".0.1"})
	for _, c := range cmds {
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("network isolation: %s: %v: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	ruleset := "table inet ksmc {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
	for _, r := range rules {
		ruleset += "    " + r + "\n"
	}
	ruleset += "  }\n}\n"
	nft := exec.CommandContext(ctx, "ip", "netns", "exec", rt, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(ruleset)
	if out, err := nft.CombinedOutput(); err != nil {
		return fmt.Errorf("network isolation: nft: %v: %s", err, strings.TrimSpace(string(out)))
	}
	fmt.Fprintf(log, "sandbox: network isolation ready (router %s)\n", rt)
	return nil
}

// teardownNetwork removes the namespaces and the route; deleting a namespace removes its veths.
func teardownNetwork(s *Sandbox) {
	rt := routerName(s)
	if err := exec.Command("ip", "netns", "pids", rt).Run(); err != nil {
		// Never set up, or only a leftover root-side veth of a namespace being deleted.
		_ = exec.Command("ip", "link", "del", "ks"+strings.TrimSuffix(strings.TrimPrefix(rt, "ksmc-"), "-rt")+"r0").Run()
		return
	}
	_ = exec.Command("ip", "route", "del", netPrefix(s)+".0.0/16").Run()
	for _, c := range s.Clusters {
		if c.Netns != "" {
			_ = exec.Command("ip", "netns", "del", c.Netns).Run()
		}
	}
	_ = exec.Command("ip", "netns", "del", rt).Run()
	// Namespaces go away asynchronously, and with them their veths: delete the root side now and
	// wait, so that an immediate setup finds the names free.
	rootVeth := "ks" + strings.TrimSuffix(strings.TrimPrefix(rt, "ksmc-"), "-rt") + "r0"
	_ = exec.Command("ip", "link", "del", rootVeth).Run()
	for i := 0; i < 50 && exec.Command("ip", "link", "show", rootVeth).Run() == nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}
}

// dial connects to addr once (from this machine's namespace) and hangs up; the error says why it
// cannot, for a wait's last error.
func dial(ctx context.Context, _ *Cluster, addr string) error {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}
