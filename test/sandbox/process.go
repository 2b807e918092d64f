package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one process the sandbox started, recorded in its PID file.
type Proc struct {
	Name    string `json:"name"` // e.g. "member1/kube-apiserver"
	PID     int    `json:"pid"`
	LogPath string `json:"log"`
	Binary  string `json:"binary"`

	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	err    error
}

// ComponentError reports a component that did not start or exited: its name, log and log tail.
type ComponentError struct {
	Component string
	LogPath   string
	Tail      string
	Err       error
}

func (e *ComponentError) Error() string {
	return fmt.Sprintf("sandbox component %s: %v\nlog: %s\n--- last lines of its log ---\n%s", e.Component, e.Err, e.LogPath, e.Tail)
}

func (e *ComponentError) Unwrap() error { return e.Err }

// procOptions says how to start a process.
type procOptions struct {
	Name    string
	Binary  string
	Args    []string
	Env     []string // added to a minimal environment
	Dir     string
	LogPath string
	PIDDir  string
	Netns   string // run inside this network namespace ("" = current)
	Detach  bool   // survive the starting process (new session); else killed when it dies
}

// startProc starts a process with its output in LogPath and its PID in PIDDir/<name>.pid.
func startProc(o procOptions) (*Proc, error) {
	if err := os.MkdirAll(filepath.Dir(o.LogPath), 0o755); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	logf, err := os.OpenFile(o.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", o.LogPath, err)
	}
	defer logf.Close()
	bin, args := o.Binary, o.Args
	if o.Netns != "" {
		args = append([]string{"netns", "exec", o.Netns, bin}, args...)
		bin = "ip"
	}
	// A descriptor this process inherited without close-on-exec (the shared flock(1) lock of a
	// test run) would be held by every component, detached ones too, long after the run: so
	// `flock LOCK sandbox up --detach` would keep LOCK taken until `sandbox down`.
	closeInheritedOnExec()
	cmd := exec.Command(bin, args...)
	cmd.Dir = o.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(baseEnv(), o.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if o.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, &ComponentError{Component: o.Name, LogPath: o.LogPath, Err: fmt.Errorf("start %s: %w", o.Binary, err)}
	}
	p := &Proc{Name: o.Name, PID: cmd.Process.Pid, LogPath: o.LogPath, Binary: o.Binary, cmd: cmd, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		if err == nil {
			err = errors.New("exited with status 0")
		}
		p.err = err
		p.mu.Unlock()
		close(p.exited)
	}()
	if o.PIDDir != "" {
		if err := os.MkdirAll(o.PIDDir, 0o755); err == nil {
			_ = os.WriteFile(filepath.Join(o.PIDDir, pidFileName(o.Name)), []byte(fmt.Sprintf("%d\n%s\n", p.PID, o.Binary)), 0o644)
		}
	}
	return p, nil
}

func pidFileName(name string) string { return strings.ReplaceAll(name, "/", "_") + ".pid" }

// baseEnv is the environment handed to components: enough to run, nothing of the caller's secrets.
func baseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "GODEBUG", "GOTRACEBACK"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// Exited returns a channel closed when the process ends (only for processes started here).
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// failure describes an exited process with the tail of its log.
func (p *Proc) failure() error {
	p.mu.Lock()
	err := p.err
	p.mu.Unlock()
	b, _ := os.ReadFile(p.LogPath)
	return &ComponentError{Component: p.Name, LogPath: p.LogPath, Tail: tail(string(b), 20), Err: fmt.Errorf("exited: %v", err)}
}

// waitFor polls check until it returns true, the context ends, or one of procs exits.
func waitFor(ctx context.Context, what string, timeout time.Duration, procs []*Proc, check func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		for _, p := range procs {
			if p == nil || p.exited == nil {
				continue
			}
			select {
			case <-p.exited:
				return p.failure()
			default:
			}
		}
		ok, err := check(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("wait for %s: %w (last error: %v)", what, ctx.Err(), last)
			}
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// settle waits for d and reports the first of procs that exited meanwhile.
func settle(ctx context.Context, d time.Duration, procs ...*Proc) error {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		for _, p := range procs {
			select {
			case <-p.exited:
				return p.failure()
			default:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stopPID stops a recorded process: SIGTERM to its process group, then SIGKILL after grace.
// It only signals a PID whose executable still matches binary, so a reused PID is left alone.
func stopPID(pid int, binary string, grace time.Duration) {
	if pid <= 0 || !pidMatches(pid, binary) {
		return
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 50 && alive(pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
}

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	// A zombie (exited, not yet reaped by its parent) counts as gone.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func pidMatches(pid int, binary string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	for _, a := range args {
		if a == binary {
			return true
		}
	}
	return false
}

// stopAllPIDs stops every process recorded in pidDir and removes the PID files.
func stopAllPIDs(pidDir string) {
	entries, _ := os.ReadDir(pidDir)
	var wg sync.WaitGroup
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".pid") {
			continue
		}
		path := filepath.Join(pidDir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		lines := strings.SplitN(strings.TrimSpace(string(b)), "\n", 2)
		pid, _ := strconv.Atoi(strings.TrimSpace(lines[0]))
		bin := ""
		if len(lines) > 1 {
			bin = strings.TrimSpace(lines[1])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopPID(pid, bin, 5*time.Second)
			_ = os.Remove(path)
		}()
	}
	wg.Wait()
}

// closeInheritedOnExec marks every descriptor above stderr close-on-exec (Go opens its own so).
func closeInheritedOnExec() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		for fd := 3; fd < 256; fd++ {
			syscall.CloseOnExec(fd)
		}
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
