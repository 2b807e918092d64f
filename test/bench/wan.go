package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
)

// wan measures with the member behind a WAN link: both the direct path (client → member) and the
// tunnel's agent → proxy connection cross the same emulated link, with loss added by nftables on
// the sandbox router for the member's traffic. The link is the router's forwarding path held by an
// NFQUEUE (nfqueue_linux.go: TCP runs end to end over the delay, as on a real WAN) or, where
// NFQUEUE or iptables is missing (or with -wan-link=relay), a TCP relay in the bench (relay.go).
func (e *env) wan(ctx context.Context, r *report) (err error) {
	fmt.Fprintln(os.Stderr, "bench: WAN figures")
	rtt := 2 * e.o.wanDelay
	member := e.sb.Cluster(cluster)
	mu, err := url.Parse(e.memberCfg.Host)
	if err != nil {
		return err
	}
	// The link: the relay (default) or the router's forwarding path (-wan-link=nfqueue).
	var wanDirect *target
	agentDials := e.proxyAddr
	linkMode := e.o.wanLink
	if linkMode == "auto" || linkMode == "nfqueue" {
		queueOff, qerr := e.wanQueue()
		switch {
		case qerr != nil && linkMode == "nfqueue":
			return qerr
		case qerr != nil:
			fmt.Fprintln(os.Stderr, "bench: no NFQUEUE link, the relay instead:", qerr)
			r.notes = append(r.notes, "WAN link: NFQUEUE unavailable ("+qerr.Error()+"): the relay emulates the link.")
			linkMode = "relay"
		default:
			linkMode = "nfqueue"
			defer queueOff()
		}
	}
	switch linkMode {
	case "relay":
		toMember, err := newRelay(net.JoinHostPort(e.rootIP, "0"), mu.Host, e.o.wanDelay, e.o.wanRate)
		if err != nil {
			return err
		}
		defer toMember.Close()
		toProxy, err := newRelay(net.JoinHostPort(e.rootIP, "0"), e.proxyAddr, e.o.wanDelay, e.o.wanRate)
		if err != nil {
			return err
		}
		defer toProxy.Close()
		dcfg := rest.CopyConfig(e.memberCfg)
		dcfg.Host = "https://" + toMember.Addr()
		dcfg.ServerName = member.NodeIP
		if wanDirect, err = newTarget("direct", dcfg, nil); err != nil {
			return err
		}
		agentDials = toProxy.Addr()
	case "nfqueue":
		// A client of its own: its connections are opened across the link.
		if wanDirect, err = newTarget("direct", e.memberCfg, nil); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-wan-link %q: auto, nfqueue or relay", e.o.wanLink)
	}
	lossOff, err := e.wanLoss(e.o.wanLoss)
	if err != nil {
		return err
	}
	defer lossOff()
	if e.o.wanRTOMin > 0 {
		routeOff, err := e.wanRTOMinRoute(e.o.wanRTOMin)
		if err != nil {
			return err
		}
		defer routeOff()
		r.notes = append(r.notes, fmt.Sprintf("Diagnostic run: rto_min %s on the member's route to the relay (-wan-rto-min).", e.o.wanRTOMin))
	}
	// The agent now dials the proxy across the link.
	if err := e.restartAgent(agentDials); err != nil {
		return err
	}
	lanDirect, tower := e.direct, e.tower
	e.direct, e.tower = wanDirect, nil
	defer func() { e.direct, e.tower = lanDirect, tower }()
	// Back to the LAN agent for what follows.
	defer func() {
		e.direct = lanDirect
		if rerr := e.restartAgent(e.proxyAddr); rerr != nil && err == nil {
			err = rerr
		}
	}()
	link := fmt.Sprintf("%s RTT, %.0f Mbit/s, %.1f %% loss each way", rtt, e.o.wanRate/1e6, e.o.wanLoss)
	if linkMode == "nfqueue" {
		r.notes = append(r.notes, "WAN link: "+link+". The machine's kernel has no sch_netem (CONFIG_NET_SCH_NETEM is off), so the sandbox "+
			"router sends the member's packets to an NFQUEUE (iptables) and the bench gives each its verdict when the link would "+
			"deliver it: paced at the rate, delayed by half the RTT in each direction, tail drop beyond two RTTs of queue (two bandwidth-delay products) "+
			"(-wan-link=nfqueue); loss from an nftables rule on the same router (numgen random). Every TCP connection of both paths "+
			"(client → member kube-apiserver; agent → proxy) runs end to end over the delayed, lossy link, as on a real WAN; the "+
			"watch updates cross it too.")
	} else {
		r.notes = append(r.notes, "WAN link: "+link+". The machine's kernel has no sch_netem (CONFIG_NET_SCH_NETEM is off), so delay and rate come "+
			"from a TCP relay in the bench process (each direction paced at the rate, delayed by half the RTT, at most two "+
			"bandwidth-delay products in flight) and loss from an nftables rule on the sandbox router (numgen random). Both the "+
			"direct connection and the agent's connection to the proxy cross it; the relay ends TCP, so loss is recovered on a short "+
			"hop and TCP's congestion control does not see the RTT as a real WAN would. On that sub-millisecond hop a lost segment "+
			"followed by others is recovered at once (SACK), but a lost segment alone in flight waits for the retransmission "+
			"timeout, at least Linux's rto_min of 200 ms: the agent writes one segment per watch event (one yamux frame each), "+
			"often alone in flight, where the member's kube-apiserver writes a watch burst as a few full segments "+
			"(-wan-link=nfqueue runs the connections end to end over the link instead).")
	}

	if !e.o.want("wan") { // -only=wan-watch
		return e.wanDelivery(ctx, r)
	}
	// LIST 8 MiB across the link.
	res, err := e.bulk("/api/v1/namespaces/"+benchNS+"/configmaps", e.n(2, 1), false)
	if err != nil {
		return err
	}
	r.add(e.ratioRow("WAN", "LIST 8 × 1 MiB ConfigMaps, MiB/s", "MiB/s", res, goal{op: "≥", limit: 0.8, unit: "×"}, false))

	// Small GETs while a bulk LIST loops on the same connection (direct: the same HTTP/2
	// connection; ks-mc: the same client connection and yamux session).
	n := e.n(150, 30)
	all := map[string][]time.Duration{} // every run's latencies, for the note
	res, err = e.reps(func(t *target) (float64, float64, error) {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = get(t.plain, t.base, "/api/v1/namespaces/"+benchNS+"/configmaps")
			}
		}()
		time.Sleep(500 * time.Millisecond)
		var lat []time.Duration
		var err error
		for i := 0; i < n && err == nil; i++ {
			start := time.Now()
			_, err = get(t.plain, t.base, smallPath)
			lat = append(lat, time.Since(start))
		}
		close(stop)
		<-done
		all[t.name] = append(all[t.name], lat...)
		return ms(percentile(lat, 0.99)), float64(n), err
	})
	if err != nil {
		return err
	}
	d, k := med(res["direct"]), med(res["ks-mc"])
	r.add(row{section: "WAN", name: "small GET p99 while a bulk LIST shares the connection", direct: fmt.Sprintf("%.1f ms", d), ksmc: fmt.Sprintf("%.1f ms", k),
		value: k - d, valueStr: fmt.Sprintf("%+.1f ms vs direct", k-d), g: goal{op: "≤", limit: ms(rtt), unit: " ms (1 RTT)"},
		note: fmt.Sprintf("%d GETs per run; all runs' p50 / p90: %.1f / %.1f ms direct, %.1f / %.1f ms ks-mc", n,
			ms(percentile(all["direct"], 0.5)), ms(percentile(all["direct"], 0.9)), ms(percentile(all["ks-mc"], 0.5)), ms(percentile(all["ks-mc"], 0.9)))})

	return e.wanDelivery(ctx, r)
}

// wanDelivery is the WAN watch delivery figure (the link set up by wan).
func (e *env) wanDelivery(ctx context.Context, r *report) error {
	p50, p99, err := e.delivery(ctx, e.n(100, 20), e.n(20, 5))
	if err != nil {
		return err
	}
	d, k := med(p99["direct"]), med(p99["ks-mc"])
	r.add(row{section: "WAN", name: "watch event delivery p99 (100 watches)", direct: fmt.Sprintf("%.1f ms", d), ksmc: fmt.Sprintf("%.1f ms", k),
		value: k - d, valueStr: fmt.Sprintf("%+.1f ms vs direct", k-d), g: goal{op: "≤", limit: 10, unit: " ms"},
		note: fmt.Sprintf("p50 %.1f ms direct, %.1f ms ks-mc (the update itself crosses the link)", med(p50["direct"]), med(p50["ks-mc"]))})

	return nil
}

// restartAgent restarts the agent process dialling proxyAddr and waits until a request passes.
func (e *env) restartAgent(proxyAddr string) error {
	e.agent.stop()
	e.agent.args = e.agentArgs(proxyAddr)
	if err := e.agent.start(); err != nil {
		return err
	}
	return eventually(2*time.Minute, "a request through the restarted agent", func() error {
		e.ksmc.plain.CloseIdleConnections()
		_, err := get(e.ksmc.plain, e.ksmc.base, smallPath)
		return err
	})
}

// wanLoss drops pct % of the packets to and from the member on the sandbox router (nftables).
func (e *env) wanLoss(pct float64) (func(), error) {
	if pct <= 0 {
		return func() {}, nil
	}
	member := e.sb.Cluster(cluster)
	id := strings.TrimSuffix(strings.TrimPrefix(member.Netns, "ksmc-"), "-"+cluster)
	rt := "ksmc-" + id + "-rt"
	veth := fmt.Sprintf("ks%sc%d", id, member.Index)
	per := int(pct * 100) // in 1/10000
	ruleset := fmt.Sprintf("table inet ksmcbench {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n"+
		"    oifname %q numgen random mod 10000 < %d drop\n    iifname %q numgen random mod 10000 < %d drop\n  }\n}\n", veth, per, veth, per)
	cmd := exec.Command("ip", "netns", "exec", rt, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nft loss rule: %v: %s", err, out)
	}
	return func() {
		_ = exec.Command("ip", "netns", "exec", rt, "nft", "delete", "table", "inet", "ksmcbench").Run()
	}, nil
}

// wanRTOMinRoute sets rto_min on a route of the member's namespace to the root namespace (where the
// relay listens): the senders of both paths' data (the member's kube-apiserver towards the relay,
// the agent towards the relay) then use it. A diagnostic of the loss recovery on the relay's short
// lossy hop (-wan-rto-min), off by default.
func (e *env) wanRTOMinRoute(d time.Duration) (func(), error) {
	ns := e.sb.Cluster(cluster).Netns
	out, err := exec.Command("ip", "netns", "exec", ns, "ip", "-o", "route", "show", "default").Output()
	if err != nil {
		return nil, fmt.Errorf("member default route: %w", err)
	}
	f := strings.Fields(string(out))
	var via, dev string
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "via":
			via = f[i+1]
		case "dev":
			dev = f[i+1]
		}
	}
	if via == "" || dev == "" {
		return nil, fmt.Errorf("member default route %q: no via/dev", strings.TrimSpace(string(out)))
	}
	dst := e.rootIP + "/32"
	if out, err := exec.Command("ip", "netns", "exec", ns, "ip", "route", "replace", dst, "via", via, "dev", dev,
		"rto_min", fmt.Sprintf("%dms", d.Milliseconds())).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("route rto_min: %v: %s", err, out)
	}
	return func() { _ = exec.Command("ip", "netns", "exec", ns, "ip", "route", "del", dst).Run() }, nil
}

// wanQueue puts the WAN link into the sandbox router's forwarding path for the member's packets:
// NFQUEUE 0 holds those to the member, 1 those from it (nfqueue_linux.go).
func (e *env) wanQueue() (func(), error) {
	member := e.sb.Cluster(cluster)
	id := strings.TrimSuffix(strings.TrimPrefix(member.Netns, "ksmc-"), "-"+cluster)
	rt := "ksmc-" + id + "-rt"
	veth := fmt.Sprintf("ks%sc%d", id, member.Index)
	ipt := "iptables-legacy"
	if _, err := exec.LookPath(ipt); err != nil {
		ipt = "iptables"
	}
	var links []*nfLink
	var rules [][]string
	off := func() {
		for _, r := range rules {
			_ = exec.Command("ip", append([]string{"netns", "exec", rt, ipt, "-D"}, r...)...).Run()
		}
		for _, l := range links {
			if n := l.Close(); n > 0 {
				fmt.Fprintf(os.Stderr, "  WAN link: %d packets tail-dropped by queue %d\n", n, l.num)
			}
		}
	}
	for num, dir := range []string{"-o", "-i"} {
		l, err := openNFLink(rt, uint16(num), e.o.wanDelay, e.o.wanRate, 4*e.o.wanDelay)
		if err != nil {
			off()
			return nil, err
		}
		links = append(links, l)
		rule := []string{"FORWARD", dir, veth, "-j", "NFQUEUE", "--queue-num", strconv.Itoa(num), "--queue-bypass"}
		if out, err := exec.Command("ip", append([]string{"netns", "exec", rt, ipt, "-I"}, rule...)...).CombinedOutput(); err != nil {
			off()
			return nil, fmt.Errorf("%s NFQUEUE rule: %v: %s", ipt, err, out)
		}
		rules = append(rules, rule)
	}
	return off, nil
}
