//go:build e2e

// Package e2e runs ks-mc end to end against real kube-apiservers in the local sandbox.
// Run with `make e2e` (or `make test`): it builds bin/kubectl-ks_mc and sets KSMC_BINARY.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ks-mc/ks-mc/test/sandbox"
)

var (
	binary  string // the kubectl-ks_mc under test
	binDir  string // a directory holding only kubectl-ks_mc, put first on PATH for plugin discovery
	workDir string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	workDir, err = os.MkdirTemp("", "ksmc-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workDir)
	binary = os.Getenv("KSMC_BINARY")
	if binary == "" {
		binary = filepath.Join(workDir, "build", "kubectl-ks_mc")
		out, err := exec.Command("go", "build", "-o", binary, "../../cmd/kubectl-ks-mc").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build kubectl-ks_mc: %v\n%s", err, out)
			return 1
		}
	}
	binDir = filepath.Join(workDir, "plugins")
	_ = os.MkdirAll(binDir, 0o755)
	if err := os.Symlink(binary, filepath.Join(binDir, "kubectl-ks_mc")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Build (or reuse) the control-plane binaries once, before any test's timeout starts.
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	start := time.Now()
	bins, err := sandbox.EnsureBinaries(ctx, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("sandbox binaries (kubernetes %s, etcd %s, kwok %s) ready in %s after %s\n",
		sandbox.KubernetesVersion, sandbox.EtcdVersion, sandbox.KwokVersion, bins, time.Since(start).Round(time.Millisecond))
	code := m.Run()
	shared.stop()
	return code
}

// sharedSandbox is one host + member1 sandbox shared by the tests that only read or that restore
// what they change. Tests that need a pristine cluster call newSandbox.
type sharedBox struct {
	once sync.Once
	s    *sandbox.Sandbox
	err  error
}

var shared sharedBox

func (b *sharedBox) stop() {
	if b.s != nil {
		_ = b.s.Down()
	}
}

func sharedSandbox(t *testing.T) *sandbox.Sandbox {
	t.Helper()
	shared.once.Do(func() {
		shared.s, shared.err = startSandbox(t.Context(), "shared", sandbox.Options{Clusters: []string{"host", "member1"}})
	})
	if shared.err != nil {
		t.Fatalf("start shared sandbox: %v", shared.err)
	}
	return shared.s
}

// newSandbox starts a sandbox of its own for one test, stopped at the test's end.
func newSandbox(t *testing.T, o sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	s, err := startSandbox(context.Background(), t.Name(), o)
	if err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, s)
		}
		_ = s.Down()
	})
	return s
}

func startSandbox(ctx context.Context, name string, o sandbox.Options) (*sandbox.Sandbox, error) {
	o.Dir = filepath.Join(workDir, "sandbox-"+strings.NewReplacer("/", "_", " ", "_").Replace(name))
	o.Binary = binary
	var log bytes.Buffer
	o.Log = &log
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	s, err := sandbox.Up(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, log.String())
	}
	fmt.Printf("sandbox %s: %d clusters up in %s\n", name, len(s.Clusters), time.Since(start).Round(time.Millisecond))
	return s, nil
}

// dumpLogs prints the tail of the sandbox's controller and pod logs for a failed test.
func dumpLogs(t *testing.T, s *sandbox.Sandbox) {
	entries, _ := os.ReadDir(s.LogDir())
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "pod-") && e.Name() != "controllers.log" {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(s.LogDir(), e.Name()))
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		t.Logf("--- %s (last lines) ---\n%s", e.Name(), strings.Join(lines, "\n"))
	}
}

// result of a command.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// kubectl runs kubectl against the sandbox with the plugin directory first on PATH, so that
// "kubectl ks-mc" goes through kubectl's plugin discovery. stdin is empty (no TTY).
func kubectl(t *testing.T, s *sandbox.Sandbox, args ...string) result {
	t.Helper()
	return runCmd(t, s, "kubectl", args...)
}

// ksmc runs "kubectl ks-mc ARGS" through plugin discovery.
func ksmc(t *testing.T, s *sandbox.Sandbox, args ...string) result {
	t.Helper()
	return runCmd(t, s, "kubectl", append([]string{"ks-mc"}, args...)...)
}

func runCmd(t *testing.T, s *sandbox.Sandbox, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	env := []string{"PATH=" + binDir + ":" + os.Getenv("PATH"), "HOME=" + workDir}
	if s != nil {
		env = append(env, "KUBECONFIG="+s.Kubeconfig)
	}
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s %v: %v", name, args, err)
	}
	return r
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
}
