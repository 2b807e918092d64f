package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const smallPath = "/api/v1/namespaces/default"

// meas is one run of a figure on one target: the value, the operations (requests or MiB) and the
// CPU every tracked process spent meanwhile.
type meas struct {
	v, ops float64
	cpu    cpuSet
}

func (e *env) targets() []*target {
	ts := []*target{e.direct, e.ksmc}
	if e.tower != nil {
		ts = append(ts, e.tower)
	}
	return ts
}

func (e *env) tracked() []*proc {
	ps := []*proc{e.apiserver, e.proxy, e.agent}
	if e.towerAgent != nil {
		ps = append(ps, e.towerAgent)
	}
	return ps
}

// reps runs f repeats times on every target, rotating the order.
func (e *env) reps(f func(t *target) (v, ops float64, err error)) (map[string][]meas, error) {
	ts := e.targets()
	out := map[string][]meas{}
	for i := 0; i < repeats; i++ {
		for j := range ts {
			t := ts[(i+j)%len(ts)]
			c0 := sampleCPU(e.tracked()...)
			v, ops, err := f(t)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", t.name, err)
			}
			out[t.name] = append(out[t.name], meas{v: v, ops: ops, cpu: sampleCPU(e.tracked()...).since(c0)})
		}
	}
	return out, nil
}

// interleaved is reps for a figure that moves with the machine's speed: each run is blocks blocks
// of f on every target in turn (the order rotating from block to block), so a drift within the
// run (this machine's speed moves by up to 2× within minutes) moves every target alike. v is the
// run's operations per second over its blocks, cpu their CPU together.
func (e *env) interleaved(blocks int, f func(t *target) (ops float64, err error)) (map[string][]meas, error) {
	ts := e.targets()
	out := map[string][]meas{}
	for i := 0; i < repeats; i++ {
		run := make([]meas, len(ts))
		took := make([]time.Duration, len(ts))
		for b := 0; b < blocks; b++ {
			for j := range ts {
				k := (b + j) % len(ts)
				c0 := sampleCPU(e.tracked()...)
				start := time.Now()
				ops, err := f(ts[k])
				if err != nil {
					return nil, fmt.Errorf("%s: %w", ts[k].name, err)
				}
				took[k] += time.Since(start)
				run[k].ops += ops
				run[k].cpu = run[k].cpu.plus(sampleCPU(e.tracked()...).since(c0))
			}
		}
		for k, t := range ts {
			run[k].v = run[k].ops / took[k].Seconds()
			out[t.name] = append(out[t.name], run[k])
		}
	}
	return out, nil
}

func med(ms []meas) float64 {
	var xs []float64
	for _, m := range ms {
		xs = append(xs, m.v)
	}
	return median(xs)
}

// cpuPer is the median over runs of CPU (ms) per operation of the named processes.
func cpuPer(ms []meas, names ...string) float64 {
	var xs []float64
	for _, m := range ms {
		var c time.Duration
		for _, n := range names {
			c += m.cpu[n]
		}
		xs = append(xs, ms2(c)/m.ops)
	}
	return median(xs)
}

func ms2(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func procNames(t *target) []string {
	var ns []string
	for _, p := range t.procs {
		ns = append(ns, p.name)
	}
	return ns
}

func (e *env) n(full, quick int) int {
	if e.o.quick {
		return quick
	}
	return full
}

// ratioRow is a tunnel ÷ direct row.
func (e *env) ratioRow(section, name, unit string, res map[string][]meas, g goal, inverse bool) row {
	d, k := med(res["direct"]), med(res["ks-mc"])
	x := row{section: section, name: name, direct: fmt.Sprintf("%.2f %s", d, unit), ksmc: fmt.Sprintf("%.2f %s", k, unit), g: g}
	x.value = ratio(k, d)
	x.valueStr = fmt.Sprintf("%.2f×", x.value)
	if tw, ok := res["tower"]; ok {
		tv := med(tw)
		x.tower = fmt.Sprintf("%.2f %s (%.2f×)", tv, unit, ratio(tv, d))
	}
	_ = inverse
	return x
}

func (e *env) lan(ctx context.Context, r *report) error {
	fmt.Fprintln(os.Stderr, "bench: LAN figures")
	if err := e.pairedLatency(r, e.n(1500, 200)); err != nil {
		return err
	}
	n := e.n(150, 50) // GETs per block, 10 blocks per run
	res, err := e.interleaved(10, func(t *target) (float64, error) {
		for i := 0; i < n; i++ {
			if _, err := get(t.plain, t.base, smallPath); err != nil {
				return 0, err
			}
		}
		return float64(n), nil
	})
	if err != nil {
		return err
	}
	r.add(e.ratioRow("LAN", "small GET (a namespace), sequential, req/s", "req/s", res, goal{op: "≥", limit: 0.85, unit: "×"}, false))
	r.add(e.cpuRow("CPU per small GET, proxy + agent", "GET", "%.3f", 0.12, res))
	for _, allTLS := range []bool{false, true} {
		fl, err := e.floorRow(e.n(5000, 1000), allTLS)
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		r.add(fl)
	}

	conc, total := 32, e.n(6000, 1000)
	res, err = e.reps(func(t *target) (float64, float64, error) {
		var wg sync.WaitGroup
		errc := make(chan error, conc)
		start := time.Now()
		for w := 0; w < conc; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < total/conc; i++ {
					if _, err := get(t.plain, t.base, smallPath); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		select {
		case err := <-errc:
			return 0, 0, err
		default:
		}
		k := total / conc * conc
		return float64(k) / time.Since(start).Seconds(), float64(k), nil
	})
	if err != nil {
		return err
	}
	r.add(e.ratioRow("LAN", "small GET, 32 concurrent, req/s", "req/s", res, goal{op: "≥", limit: 0.80, unit: "×"}, false))

	for _, gz := range []bool{false, true} {
		suffix := ""
		if gz {
			suffix = ", client asks for gzip"
		}
		res, err := e.bulk("/api/v1/namespaces/"+benchNS+"/configmaps/big-0", e.n(40, 8), gz)
		if err != nil {
			return err
		}
		x := e.ratioRow("LAN", "GET a 1 MiB ConfigMap, MiB/s"+suffix, "MiB/s", res, goal{op: "≥", limit: 0.80, unit: "×"}, false)
		x.noGoal = gz
		r.add(x)
		res, err = e.bulk("/api/v1/namespaces/"+benchNS+"/configmaps", e.n(10, 3), gz)
		if err != nil {
			return err
		}
		x = e.ratioRow("LAN", "LIST 8 × 1 MiB ConfigMaps, MiB/s"+suffix, "MiB/s", res, goal{op: "≥", limit: 0.80, unit: "×"}, false)
		x.noGoal = gz
		r.add(x)
		if !gz {
			r.add(e.cpuRow("CPU per MiB (LIST), proxy + agent", "MiB", "%.2f", 8, res))
		}
	}

	res, err = e.reps(func(t *target) (float64, float64, error) {
		d, closeAll, err := openWatches(t.plain, t.base, 500, "/api/v1/namespaces/"+benchNS+"/configmaps?watch=1&labelSelector=none%3Dnone")
		closeAll()
		t.plain.CloseIdleConnections()
		return ms(d), 500, err
	})
	if err != nil {
		return err
	}
	r.add(e.ratioRow("LAN", "open 500 watches (64 at a time), time", "ms", res, goal{op: "≤", limit: 1.3, unit: "×"}, true))

	var p99s map[string][]meas
	res, p99s, err = e.delivery(ctx, 500, e.n(20, 5))
	if err != nil {
		return err
	}
	x := e.ratioRow("LAN", "watch event delivery p50 (500 watches, update → event)", "ms", res, goal{op: "≤", limit: 1.3, unit: "×"}, true)
	x.note = fmt.Sprintf("p99: %.2f ms direct, %.2f ms ks-mc", med(p99s["direct"]), med(p99s["ks-mc"]))
	r.add(x)
	return nil
}

// pairedLatency: n pairs of small GETs, direct and tunnel in a random order within each pair.
func (e *env) pairedLatency(r *report, n int) error {
	run := func(t *target) (added, error) {
		var d, tu []time.Duration
		for _, which := range pairedOrder(n, func() bool { return rand.IntN(2) == 0 }) {
			c := e.direct
			if which == 1 {
				c = t
			}
			start := time.Now()
			if _, err := get(c.plain, c.base, smallPath); err != nil {
				return added{}, err
			}
			if which == 1 {
				tu = append(tu, time.Since(start))
			} else {
				d = append(d, time.Since(start))
			}
		}
		return addedLatency(d, tu), nil
	}
	// Warm both paths' connections first.
	for _, t := range e.targets() {
		for i := 0; i < 50; i++ {
			if _, err := get(t.plain, t.base, smallPath); err != nil {
				return err
			}
		}
	}
	var p50, p99, tp50 []float64
	for i := 0; i < repeats; i++ {
		a, err := run(e.ksmc)
		if err != nil {
			return err
		}
		p50, p99 = append(p50, ms(a.p50)), append(p99, ms(a.p99))
		if e.tower != nil {
			a, err := run(e.tower)
			if err != nil {
				return err
			}
			tp50 = append(tp50, ms(a.p50))
		}
	}
	x := row{section: "LAN", name: "added latency per small GET, paired, p50", ksmc: fmt.Sprintf("+%.3f ms", median(p50)), value: median(p50),
		valueStr: fmt.Sprintf("+%.3f ms", median(p50)), g: goal{op: "≤", limit: 0.2, unit: " ms"},
		note: fmt.Sprintf("%d pairs per run; added p99 +%.3f ms", n, median(p99))}
	if e.tower != nil {
		x.tower = fmt.Sprintf("+%.3f ms", median(tp50))
	}
	r.add(x)
	return nil
}

// bulk is n sequential GETs of path: MiB/s, and MiB as the operations.
func (e *env) bulk(path string, n int, gz bool) (map[string][]meas, error) {
	return e.reps(func(t *target) (float64, float64, error) {
		c := t.plain
		if gz {
			c = t.gz
		}
		var total int64
		start := time.Now()
		for i := 0; i < n; i++ {
			b, err := get(c, t.base, path)
			if err != nil {
				return 0, 0, err
			}
			total += b
		}
		return float64(total) / mib / time.Since(start).Seconds(), float64(total) / mib, nil
	})
}

// openWatches opens n watches of path, 64 at a time, and returns the time until all answered
// their headers and a func closing them.
func openWatches(c *http.Client, base string, n int, path string) (time.Duration, func(), error) {
	var mu sync.Mutex
	var bodies []io.Closer
	var firstErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			resp, err := c.Get(base + path)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = err
				return
			}
			if resp.StatusCode != 200 {
				resp.Body.Close()
				firstErr = fmt.Errorf("watch: %s", resp.Status)
				return
			}
			bodies = append(bodies, resp.Body)
		}()
	}
	wg.Wait()
	d := time.Since(start)
	closeAll := func() {
		for _, b := range bodies {
			_ = b.Close()
		}
	}
	return d, closeAll, firstErr
}

// delivery opens w watches of one ConfigMap on every target and updates it u times: p50 and p99
// of update start → event line read, over all watches and updates.
func (e *env) delivery(ctx context.Context, w, u int) (p50, p99 map[string][]meas, err error) {
	p99 = map[string][]meas{}
	cms := e.kube.CoreV1().ConfigMaps(benchNS)
	p50, err = e.reps(func(t *target) (float64, float64, error) {
		name := "watched"
		_ = cms.Delete(ctx, name, metav1.DeleteOptions{})
		cm, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNS}, Data: map[string]string{"n": "0"}}, metav1.CreateOptions{})
		if err != nil {
			return 0, 0, err
		}
		events := make(chan time.Time, w*4)
		var bodies []io.Closer
		defer func() {
			for _, b := range bodies {
				_ = b.Close()
			}
			t.plain.CloseIdleConnections()
		}()
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstErr error
		sem := make(chan struct{}, 64)
		for i := 0; i < w; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				resp, err := t.plain.Get(t.base + "/api/v1/namespaces/" + benchNS + "/configmaps?watch=1&fieldSelector=metadata.name%3D" + name + "&resourceVersion=" + cm.ResourceVersion)
				<-sem
				mu.Lock()
				if err != nil || resp.StatusCode != 200 {
					if err == nil {
						resp.Body.Close()
						err = fmt.Errorf("watch: %s", resp.Status)
					}
					firstErr = err
					mu.Unlock()
					return
				}
				bodies = append(bodies, resp.Body)
				mu.Unlock()
				go func() {
					br := bufio.NewReaderSize(resp.Body, 4096)
					for {
						if _, err := br.ReadSlice('\n'); err != nil && err != bufio.ErrBufferFull {
							return
						}
						events <- time.Now()
					}
				}()
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return 0, 0, firstErr
		}
		var lat []time.Duration
		var trace *os.File
		if e.o.deliveryTrace != "" {
			if trace, err = os.OpenFile(e.o.deliveryTrace, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
				return 0, 0, err
			}
			defer trace.Close()
		}
		for i := 0; i < u; i++ {
			cm.Data["n"] = fmt.Sprint(i + 1)
			start := time.Now()
			if cm, err = cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
				return 0, 0, err
			}
			updated := time.Since(start)
			for k := 0; k < w; k++ {
				select {
				case at := <-events:
					lat = append(lat, at.Sub(start))
					if trace != nil {
						fmt.Fprintf(trace, "%s\t%d\t%d\t%d\t%.2f\t%.2f\n", t.name, start.UnixNano(), i, k, ms(at.Sub(start)), ms(updated))
					}
				case <-time.After(30 * time.Second):
					return 0, 0, fmt.Errorf("update %d: %d of %d events", i, k, w)
				}
			}
		}
		p99[t.name] = append(p99[t.name], meas{v: ms(percentile(lat, 0.99))})
		return ms(percentile(lat, 0.5)), float64(len(lat)), nil
	})
	return p50, p99, err
}

// cpuRow is a "CPU per <unit>, proxy + agent" row: the figure with its goal, the split between
// proxy and agent, the member kube-apiserver's own CPU per unit both ways, and the Tower column.
// res holds CPU per unit of each series; f formats milliseconds.
func (e *env) cpuRow(name, unit, f string, limit float64, res map[string][]meas) row {
	c := cpuPer(res["ks-mc"], procNames(e.ksmc)...)
	api := cpuPer(res["direct"], e.apiserver.name)
	x := row{section: "LAN", name: name, ksmc: fmt.Sprintf(f+" ms", c), value: c, valueStr: fmt.Sprintf(f+" ms", c),
		g: goal{op: "≤", limit: limit, unit: " ms"},
		note: fmt.Sprintf("proxy "+f+" + agent "+f+" ms; member kube-apiserver per "+unit+": "+f+" ms direct, "+f+" ms through ks-mc; proxy + agent ÷ the kube-apiserver's direct: %.3f",
			cpuPer(res["ks-mc"], "proxy"), cpuPer(res["ks-mc"], "agent"), api, cpuPer(res["ks-mc"], e.apiserver.name), ratio(c, api))}
	if tw, ok := res["tower"]; ok {
		x.tower = fmt.Sprintf(f+" ms", cpuPer(tw, procNames(e.tower)...))
	}
	return x
}
