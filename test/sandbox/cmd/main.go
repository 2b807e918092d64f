// Command ks-sandbox starts and stops ks-mc's local multi-cluster sandbox.
//
//	ks-sandbox up [--clusters host,member1] [--isolate member1]   start clusters (kept running)
//	ks-sandbox env                                               print the export line for KUBECONFIG
//	ks-sandbox down                                              stop everything it started
//	ks-sandbox demo                                              up + the ks-mc flow (make demo)
//	ks-sandbox controllers --dir D                               (internal) stand-in controllers
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ks-mc/ks-mc/test/sandbox"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	dir := fs.String("dir", defaultDir(), "sandbox state directory (env KSMC_SANDBOX_DIR)")
	clusters := fs.String("clusters", "host,member1", "comma-separated cluster names (the first is the host)")
	isolate := fs.String("isolate", "", "comma-separated clusters to put in network namespaces that the others cannot dial (root only)")
	_ = fs.Parse(args)
	var err error
	switch cmd {
	case "up":
		_, err = up(ctx, *dir, split(*clusters), split(*isolate))
		if err == nil {
			printUsage(*dir)
		}
	case "down":
		err = down(*dir)
	case "env":
		fmt.Printf("export KUBECONFIG=%s\n", filepath.Join(*dir, "kubeconfig"))
	case "demo":
		err = demo(ctx, *dir, split(*clusters), split(*isolate))
	case "controllers":
		var st *sandbox.Sandbox
		st, err = sandbox.Load(*dir)
		if err == nil {
			err = sandbox.RunControllers(ctx, &st.State, os.Stderr)
		}
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ks-sandbox up|down|env|demo [--dir DIR] [--clusters host,member1] [--isolate member1]")
}

func defaultDir() string {
	if d := os.Getenv("KSMC_SANDBOX_DIR"); d != "" {
		return d
	}
	return filepath.Join(sandbox.CacheRoot(), "run")
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func up(ctx context.Context, dir string, clusters, isolate []string) (*sandbox.Sandbox, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return sandbox.Up(ctx, sandbox.Options{
		Dir: dir, Clusters: clusters, Isolated: isolate, Detach: true, ControllersExe: exe, Log: os.Stderr,
	})
}

func down(dir string) error {
	s, err := sandbox.Load(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "no sandbox running in %s\n", dir)
		return nil
	}
	if err := s.Down(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "sandbox in %s stopped\n", dir)
	return nil
}

func printUsage(dir string) {
	kc := filepath.Join(dir, "kubeconfig")
	fmt.Printf(`
The sandbox is running. Use it with:
  export KUBECONFIG=%s
  kubectl config get-contexts
  kubectl --context host -n kubesphere-system get cc,deploy,svc
Logs: %s/logs
Stop it with: make demo-down   (or: go run ./test/sandbox/cmd down)
`, kc, dir)
}

// demo brings the sandbox up and runs the ks-mc flow with the built binary.
func demo(ctx context.Context, dir string, clusters, isolate []string) error {
	bin := os.Getenv("KSMC_BINARY")
	if bin == "" {
		return fmt.Errorf("set KSMC_BINARY to the built kubectl-ks_mc (make demo does)")
	}
	if len(isolate) == 0 && len(clusters) > 1 && canIsolate() {
		isolate = clusters[1:]
	}
	s, err := up(ctx, dir, clusters, isolate)
	if err != nil {
		return err
	}
	host := s.Clusters[0].Name
	env := append(os.Environ(), "KUBECONFIG="+s.Kubeconfig, "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	step := func(title string, args ...string) error {
		fmt.Printf("\n==> %s\n$ %s\n", title, strings.Join(args, " "))
		c := exec.CommandContext(ctx, args[0], args[1:]...)
		c.Env, c.Stdout, c.Stderr = env, os.Stdout, os.Stderr
		if err := c.Run(); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
		return nil
	}
	if err := step("the plugin, through kubectl's plugin discovery", "kubectl", "ks-mc", "version"); err != nil {
		return err
	}
	if err := step("the sandbox clusters", "kubectl", "config", "get-contexts"); err != nil {
		return err
	}
	if err := step("KubeSphere 3.4 (stand-in) on the host", "kubectl", "--context", host, "-n", "kubesphere-system", "get", "cc,deploy"); err != nil {
		return err
	}
	if err := demoFlow(ctx, step, s); err != nil {
		return err
	}
	printUsage(dir)
	return nil
}
