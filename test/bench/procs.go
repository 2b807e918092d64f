package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// proc is a process the bench started (proxy, agent) or found (the member's kube-apiserver).
type proc struct {
	name    string
	args    []string // to restart it
	env     []string
	logPath string
	metrics string // http://addr/metrics, when the process serves Go runtime metrics

	mu   sync.Mutex
	cmd  *exec.Cmd
	pid  int
	done chan struct{}
}

func startProc(name, logPath string, env []string, args ...string) (*proc, error) {
	p := &proc{name: name, args: args, env: env, logPath: logPath}
	return p, p.start()
}

func (p *proc) start() error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), p.env...)
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.pid, p.done = cmd, cmd.Process.Pid, done
	p.mu.Unlock()
	return nil
}

// kill9 ends the process at once (no drain) and waits for it.
func (p *proc) kill9() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// stop sends SIGTERM (profiles are written on the way out) and waits up to 30 s.
func (p *proc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sigterm)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		p.kill9()
	}
}

func (p *proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// clkTck is USER_HZ, the unit of /proc/<pid>/stat times.
var clkTck = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}()

// cpuOf is the CPU time (user + system) a process has used so far: its CPU clock where the
// platform has one for another process (nanoseconds, procClock), else /proc/<pid>/stat, which
// counts in USER_HZ ticks (10 ms): a figure that adds blocks of a run together needs the former.
func cpuOf(pid int) (time.Duration, error) {
	if d, err := procClock(pid); err == nil {
		return d, nil
	}
	return cpuOfStat(pid)
}

// cpuOfStat is cpuOf from /proc/<pid>/stat.
func cpuOfStat(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	ticks, err := procCPU(string(b))
	if err != nil {
		return 0, err
	}
	return time.Duration(float64(ticks) / clkTck * float64(time.Second)), nil
}

// memOf is VmRSS and VmHWM in KiB.
func memOf(pid int) (uint64, uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	return procMem(string(b))
}

// rssParts is RssAnon and RssFile in KiB: the process's own memory, and the pages of files it maps
// (the binary's code: the kernel can drop and re-read them under the container's limit).
func rssParts(pid int) (anon, file uint64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	return procKiB(string(b), "RssAnon"), procKiB(string(b), "RssFile")
}

// cpuSet samples the CPU of several processes at once.
type cpuSet map[string]time.Duration

func sampleCPU(ps ...*proc) cpuSet {
	s := cpuSet{}
	for _, p := range ps {
		if p == nil {
			continue
		}
		if c, err := cpuOf(p.PID()); err == nil {
			s[p.name] = c
		}
	}
	return s
}

// since is the CPU each process used between s0 and s.
func (s cpuSet) since(s0 cpuSet) cpuSet {
	d := cpuSet{}
	for k, v := range s {
		d[k] = v - s0[k]
	}
	return d
}

// plus adds two samples' differences.
func (s cpuSet) plus(d cpuSet) cpuSet {
	out := cpuSet{}
	for k, v := range s {
		out[k] = v
	}
	for k, v := range d {
		out[k] += v
	}
	return out
}

// scrape reads one unlabelled sample of the process's /metrics.
func (p *proc) scrape(name string) (float64, error) {
	if p.metrics == "" {
		return 0, fmt.Errorf("%s serves no metrics", p.name)
	}
	resp, err := http.Get(p.metrics)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	v, ok := metricValue(string(b), name)
	if !ok {
		return 0, fmt.Errorf("%s: no %s on %s", p.name, name, p.metrics)
	}
	return v, nil
}

// pidFromFile reads a sandbox PID file.
func pidFromFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}
