package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"
)

// scale: idle watches through one agent (heap per watch on agent and proxy, from their Go runtime
// metrics) and many agents on one proxy.
func (e *env) scale(_ context.Context, r *report) error {
	fmt.Fprintln(os.Stderr, "bench: scale figures")
	n := e.o.watches
	if e.o.quick {
		n = min(n, 2000)
	}
	before, err := e.liveHeaps()
	if err != nil {
		return err
	}
	stacks := func() (float64, float64) {
		a, _ := e.agent.scrape("go_memstats_stack_inuse_bytes")
		p, _ := e.proxy.scrape("go_memstats_stack_inuse_bytes")
		return a, p
	}
	sa0, sp0 := stacks()
	start := time.Now()
	// A client of its own: its connections (n / 250 HTTP/2 connections) go away with it.
	wc, err := newTarget("ks-mc", e.tunnelCfg, nil)
	if err != nil {
		return err
	}
	d, closeAll, err := openWatches(wc.plain, wc.base, n, "/api/v1/namespaces/"+benchNS+"/configmaps?watch=1&labelSelector=none%3Dnone")
	if err != nil {
		closeAll()
		return fmt.Errorf("open %d watches: %w", n, err)
	}
	_ = start
	after, err := e.liveHeaps()
	if err != nil {
		closeAll()
		return err
	}
	sa1, sp1 := stacks()
	// Idle CPU with the watches open: what the Go memory limit costs when the live heap is close
	// to it (the collector then runs more often).
	idle := 10 * time.Second
	if e.o.quick {
		idle = 3 * time.Second
	}
	c0 := sampleCPU(e.agent, e.proxy)
	time.Sleep(idle)
	cpu := sampleCPU(e.agent, e.proxy).since(c0)
	rssA, _, _ := memOf(e.agent.PID())
	rssP, _, _ := memOf(e.proxy.PID())
	anonA, fileA := rssParts(e.agent.PID())
	anonP, fileP := rssParts(e.proxy.PID())
	if e.o.profileDir != "" {
		// Heap profiles with the watches open (written on SIGTERM, before draining).
		e.stopAll()
	}
	closeAll()
	wc.plain.CloseIdleConnections()
	perA := (after["agent"] - before["agent"]) / float64(n) / 1024
	perP := (after["proxy"] - before["proxy"]) / float64(n) / 1024
	r.add(row{section: "scale", name: fmt.Sprintf("%d idle watches through one agent: agent heap per watch", n), ksmc: fmt.Sprintf("%.1f KiB", perA), value: perA,
		valueStr: fmt.Sprintf("%.1f KiB", perA), g: goal{op: "≤", limit: 8, unit: " KiB"},
		note: fmt.Sprintf("live heap after a GC; goroutine stacks add %.1f KiB; opened in %s", (sa1-sa0)/float64(n)/1024, d.Round(time.Millisecond))})
	r.add(row{section: "scale", name: fmt.Sprintf("%d idle watches: proxy heap per watch", n), ksmc: fmt.Sprintf("%.1f KiB", perP), value: perP,
		valueStr: fmt.Sprintf("%.1f KiB", perP), g: goal{op: "≤", limit: 16, unit: " KiB"},
		note: fmt.Sprintf("live heap after a GC; goroutine stacks add %.1f KiB", (sp1-sp0)/float64(n)/1024)})
	// RSS (KiB) against the limits the manifests render, the processes running with the environment
	// those render (renderedMem).
	fa, fp := float64(rssA)*1024/float64(e.agentMem.limit), float64(rssP)*1024/float64(e.proxyMem.limit)
	frac := max(fa, fp)
	r.add(row{section: "scale", name: fmt.Sprintf("%d idle watches: agent and proxy RSS within the rendered limits", n), ksmc: fmt.Sprintf("agent %.0f MiB, proxy %.0f MiB", float64(rssA)/1024, float64(rssP)/1024),
		value: frac, valueStr: fmt.Sprintf("agent %.0f %%, proxy %.0f %% of its limit", 100*fa, 100*fp),
		g: goal{op: "≤", limit: 1, unit: " (fraction of the limit)"},
		note: fmt.Sprintf("RSS anonymous + file-backed (the binary's code): agent %.0f + %.0f MiB, proxy %.0f + %.0f MiB; limits rendered by ks-mc: agent %s (%.0f MiB), proxy %s (%.0f MiB); both run with their containers' memory environment (%s); idle CPU with the watches open: agent %.1f %%, proxy %.1f %% of a core",
			float64(anonA)/1024, float64(fileA)/1024, float64(anonP)/1024, float64(fileP)/1024,
			e.agentMem.limitStr, float64(e.agentMem.limit)/mib, e.proxyMem.limitStr, float64(e.proxyMem.limit)/mib, envNames(e.agentMem.env, e.proxyMem.env),
			100*cpu["agent"].Seconds()/idle.Seconds(), 100*cpu["proxy"].Seconds()/idle.Seconds())})

	if e.o.profileDir != "" {
		return nil
	}
	rows, err := manyAgents(e.memberCfg, e.o.agents)
	if err != nil {
		return fmt.Errorf("%d agents: %w", e.o.agents, err)
	}
	for _, x := range rows {
		r.add(x)
	}
	return nil
}

// liveHeaps returns the live heap (bytes) of the agent and the proxy as of a GC that completed
// after this call started: small requests through the tunnel make both collect sooner, and the Go
// runtime forces a GC at least every 2 minutes.
func (e *env) liveHeaps() (map[string]float64, error) {
	procs := []*proc{e.agent, e.proxy}
	cycles := map[string]float64{}
	for _, p := range procs {
		c, err := p.scrape("go_gc_cycles_total")
		if err != nil {
			return nil, err
		}
		cycles[p.name] = c
	}
	deadline := time.Now().Add(150 * time.Second)
	for {
		done := true
		for _, p := range procs {
			c, err := p.scrape("go_gc_cycles_total")
			if err != nil {
				return nil, err
			}
			if c < cycles[p.name]+1 {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no GC in agent and proxy within 150 s")
		}
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					_, _ = get(e.ksmc.plain, e.ksmc.base, smallPath)
				}
			}()
		}
		wg.Wait()
	}
	out := map[string]float64{}
	for _, p := range procs {
		v, err := p.scrape("go_gc_heap_live_bytes")
		if err != nil {
			return nil, err
		}
		out[p.name] = v
	}
	return out, nil
}

// restart: the proxy is killed (-9), stays down, comes back; time from its start to the first
// successful request through the tunnel, 3 reps.
func (e *env) restart(r *report) error {
	fmt.Fprintln(os.Stderr, "bench: proxy restart figure")
	var ts []time.Duration
	c := &http.Client{Transport: e.ksmc.plain.Transport, Timeout: 2 * time.Second}
	for i := 0; i < repeats; i++ {
		e.proxy.kill9()
		time.Sleep(e.o.downFor)
		start := time.Now()
		if err := e.proxy.start(); err != nil {
			return err
		}
		for {
			if _, err := get(c, e.ksmc.base, smallPath); err == nil {
				break
			}
			e.ksmc.plain.CloseIdleConnections()
			if time.Since(start) > 2*time.Minute {
				return fmt.Errorf("no successful request within 2 minutes of the restart")
			}
			time.Sleep(5 * time.Millisecond)
		}
		ts = append(ts, time.Since(start))
		fmt.Fprintf(os.Stderr, "  restart %d: first OK after %s\n", i+1, ts[i].Round(time.Millisecond))
		time.Sleep(3 * time.Second) // a settled session before the next crash
	}
	worst := max(ts[0], ts[1], ts[2])
	r.add(row{section: "LAN", name: fmt.Sprintf("proxy down %s, restart → first OK request (worst of 3)", e.o.downFor), ksmc: fmt.Sprintf("%.2f / %.2f / %.2f s", ts[0].Seconds(), ts[1].Seconds(), ts[2].Seconds()),
		value: worst.Seconds(), valueStr: fmt.Sprintf("%.2f s", worst.Seconds()), g: goal{op: "≤", limit: 0.5, unit: " s every rep"},
		note: "from the new proxy process's start (kill -9 before)"})
	return nil
}
