package cmd

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// writeKubeconfig writes a kubeconfig with the given context -> server URL entries.
func writeKubeconfig(t *testing.T, current string, contexts map[string]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Config\ncurrent-context: " + current + "\nclusters:\n")
	for name, server := range contexts {
		fmt.Fprintf(&b, "- name: %s-cluster\n  cluster:\n    server: %s\n", name, server)
	}
	b.WriteString("users:\n- name: u\n  user:\n    token: not-a-secret\ncontexts:\n")
	for name := range contexts {
		fmt.Fprintf(&b, "- name: %s\n  context:\n    cluster: %s-cluster\n    user: u\n", name, name)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// complete runs `kubectl ks-mc __complete args...` on a fresh command tree (extra, if set, is
// added before the completions are wired, like a registered subcommand) and returns the
// suggestions (descriptions stripped) and the directive line.
func complete(t *testing.T, extra func() *cobra.Command, args ...string) (suggestions []string, descriptions map[string]string, directive string) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := NewCmdRoot(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	if extra != nil {
		root.AddCommand(extra())
		registerCompletions(root)
	}
	root.SetArgs(append([]string{cobra.ShellCompRequestCmd}, args...))
	if err := root.Execute(); err != nil {
		t.Fatalf("__complete %v: %v\n%s", args, err, errOut.String())
	}
	descriptions = map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
		if strings.HasPrefix(line, ":") {
			directive = line
			break
		}
		name, desc, _ := strings.Cut(line, "\t")
		suggestions = append(suggestions, name)
		descriptions[name] = desc
	}
	if directive == "" {
		t.Fatalf("__complete %v printed no directive:\n%s", args, out.String())
	}
	return suggestions, descriptions, directive
}

// noFileComp is how __complete prints cobra.ShellCompDirectiveNoFileComp.
var noFileComp = fmt.Sprintf(":%d", cobra.ShellCompDirectiveNoFileComp)

func TestCompleteContextNames(t *testing.T) {
	kc := writeKubeconfig(t, "member1", map[string]string{
		"host": "https://127.0.0.1:1", "host-2": "https://127.0.0.1:2", "member1": "https://127.0.0.1:3", "member2": "https://127.0.0.1:4",
	})
	got, desc, dir := complete(t, nil, "--kubeconfig", kc, "--context", "")
	if want := []string{"host", "host-2", "member1", "member2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("--context suggestions = %v, want %v", got, want)
	}
	if desc["host-2"] != "cluster host-2-cluster" {
		t.Errorf("description of host-2 = %q, want the context's cluster", desc["host-2"])
	}
	if dir != noFileComp {
		t.Errorf("directive = %q, want %q (no file names)", dir, noFileComp)
	}

	// The persistent flag completes on subcommands too, filtered by the prefix typed so far.
	got, _, _ = complete(t, nil, "version", "--kubeconfig", kc, "--context", "mem")
	if want := []string{"member1", "member2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("version --context mem: %v, want %v", got, want)
	}
	// Without --kubeconfig, $KUBECONFIG is used like kubectl does.
	t.Setenv("KUBECONFIG", kc)
	got, _, _ = complete(t, nil, "--context=ho")
	if want := []string{"host", "host-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("--context=ho with $KUBECONFIG: %v, want %v", got, want)
	}
	// A missing kubeconfig gives no suggestions, not an error.
	got, _, dir = complete(t, nil, "--kubeconfig", filepath.Join(t.TempDir(), "absent"), "--context", "")
	if len(got) != 0 || dir != noFileComp {
		t.Errorf("missing kubeconfig: suggestions %v directive %q, want none and %q", got, dir, noFileComp)
	}
}

// probeCommand stands in for commands like join/status that have --host-context,
// --host-kubeconfig and --name flags.
func probeCommand() *cobra.Command {
	c := &cobra.Command{Use: "probe", RunE: func(*cobra.Command, []string) error { return nil }}
	c.Flags().String("host-context", "", "")
	c.Flags().String("host-kubeconfig", "", "")
	c.Flags().String("name", "", "")
	return c
}

func TestCompleteHostContext(t *testing.T) {
	member := writeKubeconfig(t, "m", map[string]string{"m": "https://127.0.0.1:1", "other": "https://127.0.0.1:2"})
	host := writeKubeconfig(t, "h", map[string]string{"h": "https://127.0.0.1:3", "h2": "https://127.0.0.1:4"})

	got, _, dir := complete(t, probeCommand, "probe", "--kubeconfig", member, "--host-context", "")
	if want := []string{"m", "other"}; !reflect.DeepEqual(got, want) || dir != noFileComp {
		t.Errorf("--host-context: %v %q, want %v %q", got, dir, want, noFileComp)
	}
	// --host-kubeconfig names the kubeconfig whose contexts --host-context picks from.
	got, _, _ = complete(t, probeCommand, "probe", "--kubeconfig", member, "--host-kubeconfig", host, "--host-context", "h")
	if want := []string{"h", "h2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("--host-context with --host-kubeconfig: %v, want %v", got, want)
	}
}

// fakeHost serves the KubeSphere Cluster list of a host cluster.
func fakeHost(t *testing.T, names ...string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/apis/cluster.kubesphere.io/v1alpha1/clusters" {
			http.NotFound(w, r)
			return
		}
		calls.Add(1)
		var items []string
		for _, n := range names {
			items = append(items, fmt.Sprintf(`{"apiVersion":"cluster.kubesphere.io/v1alpha1","kind":"Cluster","metadata":{"name":%q}}`, n))
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"apiVersion":"cluster.kubesphere.io/v1alpha1","kind":"ClusterList","metadata":{},"items":[%s]}`, strings.Join(items, ","))
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestCompleteClusterNames(t *testing.T) {
	host, hostCalls := fakeHost(t, "host", "member1", "member2", "edge")
	other, otherCalls := fakeHost(t, "other-a")
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	t.Cleanup(broken.Close)
	kc := writeKubeconfig(t, "member", map[string]string{"host": host.URL, "member": other.URL, "broken": broken.URL})

	got, _, dir := complete(t, probeCommand, "probe", "--kubeconfig", kc, "--host-context", "host", "--name", "mem")
	if want := []string{"member1", "member2"}; !reflect.DeepEqual(got, want) || dir != noFileComp {
		t.Errorf("--name mem on host: %v %q, want %v %q", got, dir, want, noFileComp)
	}
	if hostCalls.Load() == 0 || otherCalls.Load() != 0 {
		t.Errorf("clusters listed on host %d times and on the member %d times, want the host only", hostCalls.Load(), otherCalls.Load())
	}
	// Without --host-context the selected --context is the host.
	got, _, _ = complete(t, probeCommand, "probe", "--kubeconfig", kc, "--context", "host", "--name", "")
	if want := []string{"edge", "host", "member1", "member2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("--name with --context host: %v, want %v", got, want)
	}
	// ... and without either, the current context.
	got, _, _ = complete(t, probeCommand, "probe", "--kubeconfig", kc, "--name", "")
	if want := []string{"other-a"}; !reflect.DeepEqual(got, want) {
		t.Errorf("--name with the current context: %v, want %v", got, want)
	}
	// API errors and unknown contexts mean no suggestions (and no error).
	for _, args := range [][]string{
		{"probe", "--kubeconfig", kc, "--host-context", "broken", "--name", ""},
		{"probe", "--kubeconfig", kc, "--host-context", "nope", "--name", ""},
	} {
		got, _, dir = complete(t, probeCommand, args...)
		if len(got) != 0 || dir != noFileComp {
			t.Errorf("%v: suggestions %v directive %q, want none and %q", args, got, dir, noFileComp)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		var out, errOut bytes.Buffer
		root := NewCmdRoot(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
		root.SetArgs([]string{"completion", shell})
		if err := root.Execute(); err != nil {
			t.Fatalf("completion %s: %v\n%s", shell, err, errOut.String())
		}
		// Every script asks the program itself for suggestions.
		if !strings.Contains(out.String(), cobra.ShellCompRequestCmd) {
			t.Errorf("completion %s: script does not call %s:\n%.300s", shell, cobra.ShellCompRequestCmd, out.String())
		}
	}
}
