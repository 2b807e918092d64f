package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Pinned control-plane versions. Changing one changes the cache key, so binaries are rebuilt.
const (
	KubernetesVersion = "v1.34.2"
	EtcdVersion       = "v3.6.5"
	KwokVersion       = "v0.7.0"
)

// Binary names in the cache's bin directory.
const (
	BinEtcd              = "etcd"
	BinKubeAPIServer     = "kube-apiserver"
	BinControllerManager = "kube-controller-manager"
	BinScheduler         = "kube-scheduler"
	BinKwok              = "kwok"
)

// CacheRoot is ${XDG_CACHE_HOME:-~/.cache}/ks-mc/sandbox (outside the repository).
func CacheRoot() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "ks-mc", "sandbox")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return filepath.Join(os.TempDir(), "ks-mc-cache", "sandbox")
	}
	return filepath.Join(home, ".cache", "ks-mc", "sandbox")
}

// versionKey names the cache directory of one set of pinned versions.
func versionKey() string {
	return fmt.Sprintf("k8s-%s_etcd-%s_kwok-%s", KubernetesVersion, EtcdVersion, KwokVersion)
}

// BuildError is a failed build step: the command and the tail of its output.
type BuildError struct {
	Command string
	Tail    string
	Err     error
}

func (e *BuildError) Error() string {
	return fmt.Sprintf("build sandbox binaries: %s: %v\n--- last lines of output ---\n%s", e.Command, e.Err, e.Tail)
}

func (e *BuildError) Unwrap() error { return e.Err }

// EnsureBinaries returns the directory holding the pinned control-plane binaries, building them from
// the Go module proxy first when the cache lacks them. Concurrent callers wait on a file lock.
func EnsureBinaries(ctx context.Context, log io.Writer) (string, error) {
	if log == nil {
		log = io.Discard
	}
	dir := filepath.Join(CacheRoot(), versionKey())
	bin := filepath.Join(dir, "bin")
	if complete(dir) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create binary cache %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("open cache lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock binary cache: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck
	if complete(dir) {
		return bin, nil
	}
	start := time.Now()
	fmt.Fprintf(log, "sandbox: building control-plane binaries (kubernetes %s, etcd %s, kwok %s) into %s; this takes several minutes once\n",
		KubernetesVersion, EtcdVersion, KwokVersion, bin)
	if err := build(ctx, dir, bin, log); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ".complete"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("mark binary cache complete: %w", err)
	}
	fmt.Fprintf(log, "sandbox: binaries built in %s\n", time.Since(start).Round(time.Second))
	return bin, nil
}

func complete(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return false
	}
	for _, b := range []string{BinEtcd, BinKubeAPIServer, BinControllerManager, BinScheduler, BinKwok} {
		if _, err := os.Stat(filepath.Join(dir, "bin", b)); err != nil {
			return false
		}
	}
	return true
}

func build(ctx context.Context, dir, bin string, log io.Writer) error {
	k8sSrc := filepath.Join(dir, "src", "kubernetes")
	etcdSrc := filepath.Join(dir, "src", "etcd")
	for _, d := range []string{k8sSrc, etcdSrc, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	// The kubernetes module's go.mod points its staging modules at ./staging; a consumer must
	// replace each with the published k8s.io/<name> v0.<minor>.<patch>.
	stagingVersion := "v0" + strings.TrimPrefix(KubernetesVersion, "v1")
	if err := run(ctx, log, k8sSrc, nil, "go", "mod", "download", "k8s.io/kubernetes@"+KubernetesVersion); err != nil {
		return err
	}
	modFile, err := goModCachePath(ctx, "k8s.io/kubernetes", KubernetesVersion)
	if err != nil {
		return err
	}
	staging, err := stagingModules(modFile)
	if err != nil {
		return err
	}
	var gomod strings.Builder
	fmt.Fprintf(&gomod, "module ksmc.local/sandbox-kubernetes\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n\n", KubernetesVersion)
	for _, m := range staging {
		fmt.Fprintf(&gomod, "replace %s => %s %s\n", m, m, stagingVersion)
	}
	if err := writeFiles(k8sSrc, map[string]string{
		"go.mod": gomod.String(),
		"tools.go": "package tools\n\nimport (\n\t_ \"k8s.io/kubernetes/cmd/kube-apiserver/app\"\n" +
			"\t_ \"k8s.io/kubernetes/cmd/kube-controller-manager/app\"\n\t_ \"k8s.io/kubernetes/cmd/kube-scheduler/app\"\n)\n",
	}); err != nil {
		return err
	}
	if err := run(ctx, log, k8sSrc, nil, "go", "mod", "tidy"); err != nil {
		return err
	}
	minor := strings.Split(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	ld := fmt.Sprintf("-X k8s.io/component-base/version.gitVersion=%s -X k8s.io/component-base/version.gitMajor=%s -X k8s.io/component-base/version.gitMinor=%s -X k8s.io/component-base/version.gitTreeState=clean",
		KubernetesVersion, minor[0], minor[1])
	for _, name := range []string{BinScheduler, BinKubeAPIServer, BinControllerManager} {
		if err := run(ctx, log, k8sSrc, nil, "go", "build", "-o", filepath.Join(bin, name), "-ldflags", ld, "k8s.io/kubernetes/cmd/"+name); err != nil {
			return err
		}
	}
	etcdMod := fmt.Sprintf("module ksmc.local/sandbox-etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n\n", EtcdVersion)
	for _, m := range []string{"api/v3", "client/pkg/v3", "client/v3", "pkg/v3"} {
		etcdMod += fmt.Sprintf("replace go.etcd.io/etcd/%s => go.etcd.io/etcd/%s %s\n", m, m, EtcdVersion)
	}
	if err := writeFiles(etcdSrc, map[string]string{
		"go.mod":   etcdMod,
		"tools.go": "package tools\n\nimport _ \"go.etcd.io/etcd/server/v3\"\n",
	}); err != nil {
		return err
	}
	if err := run(ctx, log, etcdSrc, nil, "go", "mod", "tidy"); err != nil {
		return err
	}
	if err := run(ctx, log, etcdSrc, nil, "go", "build", "-o", filepath.Join(bin, BinEtcd), "go.etcd.io/etcd/server/v3"); err != nil {
		return err
	}
	return run(ctx, log, dir, []string{"GOBIN=" + bin}, "go", "install", "sigs.k8s.io/kwok/cmd/kwok@"+KwokVersion)
}

func goModCachePath(ctx context.Context, mod, ver string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMODCACHE: %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "cache", "download", mod, "@v", ver+".mod"), nil
}

// stagingModules lists the k8s.io modules that kubernetes' go.mod replaces with ./staging paths.
func stagingModules(modFile string) ([]string, error) {
	b, err := os.ReadFile(modFile)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", modFile, err)
	}
	var mods []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "replace "))
		if len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "./staging/") {
			mods = append(mods, f[0])
		}
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("read %s: no staging replaces found", modFile)
	}
	return mods, nil
}

func writeFiles(dir string, files map[string]string) error {
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// run executes one build step; on failure the error carries the command and its output's tail.
func run(ctx context.Context, log io.Writer, dir string, env []string, name string, args ...string) error {
	cmdline := name + " " + strings.Join(args, " ")
	fmt.Fprintf(log, "sandbox: (cd %s && %s)\n", dir, cmdline)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return &BuildError{Command: "(cd " + dir + " && " + cmdline + ")", Tail: tail(out.String(), 30), Err: err}
	}
	return nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TowerAgentPackage is test/toweragent's program with the flags of kubesphere/tower:v0.2.1's /agent.
const TowerAgentPackage = "github.com/ks-mc/ks-mc/test/toweragent/cmd/tower-agent"

// towerAgentBinary resolves Options.TowerAgentBinary: the option, else $KSMC_TOWER_AGENT_BINARY,
// else a build of TowerAgentPackage into dir/bin (from this module; "" when it cannot be built,
// then Tower-image Deployments run no process, as before).
func towerAgentBinary(ctx context.Context, o Options, dir string, logf func(string, ...any)) string {
	bin := o.TowerAgentBinary
	if bin == "" {
		bin = os.Getenv("KSMC_TOWER_AGENT_BINARY")
	}
	switch bin {
	case "-":
		return ""
	case "":
	default:
		return bin
	}
	out := filepath.Join(dir, "bin", "tower-agent")
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, "go", "build", "-o", out, TowerAgentPackage)
	if b, err := cmd.CombinedOutput(); err != nil {
		logf("no Tower agents: build %s: %v: %s", TowerAgentPackage, err, tailLines(string(b), 5))
		return ""
	}
	return out
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
