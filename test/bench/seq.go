package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// seqEvents are what -only=seq counts per small GET in each tunnel process, with perf(1).
var seqEvents = []string{"task-clock", "raw_syscalls:sys_enter", "syscalls:sys_enter_write", "syscalls:sys_enter_read",
	"syscalls:sys_enter_futex", "syscalls:sys_enter_epoll_pwait", "sched:sched_switch"}

// seq is a diagnostic (-only=seq, never part of the report): sequential small GETs through ks-mc
// alone, with the CPU per GET of proxy and agent and, where perf(1) is installed, what each
// process does per GET (syscalls by kind, context switches), to see where a GET's CPU goes.
// KSMC_SEQ_RECORD=DIR records call graphs instead (perf record -g, event KSMC_SEQ_EVENT, default
// cpu-clock) into DIR/proxy.data and DIR/agent.data; run it with an unstripped binary.
func (e *env) seq(n int) error {
	for i := 0; i < 200; i++ {
		if _, err := get(e.ksmc.plain, e.ksmc.base, smallPath); err != nil {
			return err
		}
	}
	perf, _ := exec.LookPath("perf")
	type counting struct {
		name string
		cmd  *exec.Cmd
		out  bytes.Buffer
	}
	var cs []*counting
	if perf != "" {
		for _, p := range []*proc{e.proxy, e.agent} {
			c := &counting{name: p.name}
			c.cmd = exec.Command(perf, "stat", "-x", ",", "-e", strings.Join(seqEvents, ","), "-p", strconv.Itoa(p.PID()))
			if dir := os.Getenv("KSMC_SEQ_RECORD"); dir != "" { // perf record instead: KSMC_SEQ_EVENT (default cpu-clock), call graphs
				ev := os.Getenv("KSMC_SEQ_EVENT")
				if ev == "" {
					ev = "cpu-clock"
				}
				c.cmd = exec.Command(perf, "record", "-g", "-e", ev, "-o", dir+"/"+p.name+".data", "-p", strconv.Itoa(p.PID()))
			}
			c.cmd.Stderr = &c.out
			if err := c.cmd.Start(); err != nil {
				return err
			}
			cs = append(cs, c)
		}
		time.Sleep(500 * time.Millisecond) // perf attaches
	}
	// Rounds of direct and tunnel GETs alternate, so the machine's speed, which moves a lot here,
	// moves both; the member kube-apiserver's CPU per direct GET is the yardstick.
	var px, ag, ap, ratio []float64
	start := time.Now()
	rounds := 10
	for r := 0; r < rounds; r++ {
		c0 := sampleCPU(e.apiserver)
		for i := 0; i < n/rounds/2; i++ {
			if _, err := get(e.direct.plain, e.direct.base, smallPath); err != nil {
				return err
			}
		}
		d := sampleCPU(e.apiserver).since(c0)
		c0 = sampleCPU(e.proxy, e.agent)
		for i := 0; i < n/rounds; i++ {
			if _, err := get(e.ksmc.plain, e.ksmc.base, smallPath); err != nil {
				return err
			}
		}
		c := sampleCPU(e.proxy, e.agent).since(c0)
		per := func(x time.Duration, k int) float64 { return float64(x.Microseconds()) / float64(k) }
		px, ag = append(px, per(c["proxy"], n/rounds)), append(ag, per(c["agent"], n/rounds))
		ap = append(ap, per(d[e.apiserver.name], n/rounds/2))
		ratio = append(ratio, (px[r]+ag[r])/ap[r])
	}
	took := time.Since(start)
	fmt.Printf("seq: %d GETs in %s; median of %d rounds, CPU per GET: proxy %.1f µs, agent %.1f µs; kube-apiserver per direct GET %.1f µs; (proxy+agent)/apiserver %.3f (rounds %s)\n",
		n, took.Round(time.Second), rounds, median(px), median(ag), median(ap), median(ratio), fmtList(ratio))
	for _, c := range cs {
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		_ = c.cmd.Wait()
	}
	for _, c := range cs {
		var parts []string
		for _, line := range strings.Split(c.out.String(), "\n") {
			f := strings.Split(line, ",")
			if len(f) < 3 || !slices.Contains(seqEvents, f[2]) {
				continue
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				continue
			}
			name := strings.TrimPrefix(strings.TrimPrefix(strings.TrimPrefix(f[2], "syscalls:sys_enter_"), "raw_syscalls:sys_enter"), "sched:")
			if name == "" {
				name = "syscalls"
			}
			if f[2] == "task-clock" {
				v *= 1e3 // ms → µs
			}
			parts = append(parts, fmt.Sprintf("%s %.2f", name, v/float64(n)))
		}
		fmt.Printf("seq: %s per GET: %s\n", c.name, strings.Join(parts, ", "))
	}
	return nil
}

func fmtList(xs []float64) string {
	var p []string
	for _, x := range xs {
		p = append(p, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(p, " ")
}
