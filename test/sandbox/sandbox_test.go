package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"POD_IP": "127.100.1.1", "A": "x"}
	for in, want := range map[string]string{
		"--bind-address=$(POD_IP)": "--bind-address=127.100.1.1",
		"$(A)$(A)":                 "xx",
		"$(MISSING)":               "$(MISSING)",
		"$$(A)":                    "$(A)",
		"plain":                    "plain",
		"$(unterminated":           "$(unterminated",
	} {
		if got := expandVars(in, vars); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRewritePaths(t *testing.T) {
	mounts := []mount{{path: "/etc/ks-mc/tls", local: "/tmp/p/tls"}, {path: "/etc/ks-mc", local: "/tmp/p/cfg"}}
	for in, want := range map[string]string{
		"--token-file=/etc/ks-mc/token": "--token-file=/tmp/p/cfg/token",
		"--cert=/etc/ks-mc/tls/tls.crt": "--cert=/tmp/p/tls/tls.crt",
		"/etc/ks-mc":                    "/tmp/p/cfg",
		"/etc/ks-mcx/token":             "/etc/ks-mcx/token",
		"--other=/var/run/x":            "--other=/var/run/x",
	} {
		if got := rewritePaths(in, mounts); got != want {
			t.Errorf("rewritePaths(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestImageRepositoryOf(t *testing.T) {
	for in, want := range map[string]string{
		"ghcr.io/ks-mc/ks-mc:v1.0.0":     "ghcr.io/ks-mc/ks-mc",
		"ghcr.io/ks-mc/ks-mc@sha256:abc": "ghcr.io/ks-mc/ks-mc",
		"localhost:5000/ks-mc:dev":       "localhost:5000/ks-mc",
		"localhost:5000/ks-mc":           "localhost:5000/ks-mc",
		"kubesphere/tower:v0.2.1":        "kubesphere/tower",
	} {
		if got := ImageRepositoryOf(in); got != want {
			t.Errorf("ImageRepositoryOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactArgs(t *testing.T) {
	got := redactArgs([]string{"agent", "--token=s3cr3t", "--token-file=/x", "--name=m"})
	if strings.Contains(got, "s3cr3t") || !strings.Contains(got, "--token-file=/x") {
		t.Fatalf("redactArgs = %q", got)
	}
}

func TestStagingModules(t *testing.T) {
	dir := t.TempDir()
	mod := filepath.Join(dir, "go.mod")
	os.WriteFile(mod, []byte("module k8s.io/kubernetes\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n\tgithub.com/x/y => github.com/x/y v1.0.0\n)\n"), 0o644)
	got, err := stagingModules(mod)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "k8s.io/api,k8s.io/client-go" {
		t.Fatalf("stagingModules = %v", got)
	}
	os.WriteFile(mod, []byte("module x\n"), 0o644)
	if _, err := stagingModules(mod); err == nil {
		t.Fatal("want an error for a go.mod without staging replaces")
	}
}

// A failed build step names the command and shows the tail of its output.
func TestBuildErrorNamesCommandAndTail(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\n\ngo 1.24\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { undefinedSymbol() }\n"), 0o644)
	err := run(context.Background(), nil2(), dir, nil, "go", "build", "-o", filepath.Join(dir, "out"), ".")
	var be *BuildError
	if !errors.As(err, &be) {
		t.Fatalf("want *BuildError, got %v", err)
	}
	if !strings.Contains(be.Command, "go build") || !strings.Contains(be.Command, dir) {
		t.Errorf("command not named: %q", be.Command)
	}
	if !strings.Contains(be.Tail, "undefinedSymbol") {
		t.Errorf("tail lacks the compiler error: %q", be.Tail)
	}
	if !strings.Contains(err.Error(), "last lines of output") {
		t.Errorf("message: %v", err)
	}
}

func TestTail(t *testing.T) {
	if got := tail("a\nb\nc\n", 2); got != "b\nc" {
		t.Fatalf("tail = %q", got)
	}
}

// An exited process is reported with its name, log path and the tail of its log.
func TestComponentFailureReport(t *testing.T) {
	dir := t.TempDir()
	p, err := startProc(procOptions{Name: "c1/fake", Binary: "/bin/sh", Args: []string{"-c", "echo boom-line; exit 3"},
		LogPath: filepath.Join(dir, "fake.log"), PIDDir: filepath.Join(dir, "pids")})
	if err != nil {
		t.Fatal(err)
	}
	err = waitFor(context.Background(), "never", 10e9, []*Proc{p}, func(context.Context) (bool, error) { return false, nil })
	var ce *ComponentError
	if !errors.As(err, &ce) {
		t.Fatalf("want *ComponentError, got %v", err)
	}
	if ce.Component != "c1/fake" || !strings.Contains(ce.Tail, "boom-line") || !strings.Contains(err.Error(), "fake.log") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("report lacks details: %v", err)
	}
}

// stopAllPIDs stops what the PID files name and nothing else.
func TestStopAllPIDs(t *testing.T) {
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	p, err := startProc(procOptions{Name: "c/sleep", Binary: "/bin/sleep", Args: []string{"60"}, LogPath: filepath.Join(dir, "s.log"), PIDDir: pids})
	if err != nil {
		t.Fatal(err)
	}
	// A PID file naming another binary must not be acted on.
	os.WriteFile(filepath.Join(pids, "other.pid"), []byte("1\n/not/this\n"), 0o644)
	stopAllPIDs(pids)
	<-p.Exited()
	if alive(p.PID) {
		t.Fatal("process still alive")
	}
	if !alive(1) {
		t.Fatal("pid 1 must be untouched")
	}
	if entries, _ := os.ReadDir(pids); len(entries) != 0 {
		t.Fatalf("pid files left: %v", entries)
	}
}

func nil2() *strings.Builder { return &strings.Builder{} }
