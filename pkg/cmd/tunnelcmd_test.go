package cmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// runRoot runs the root command with args against an empty kubeconfig and returns the error and
// everything printed.
func runRoot(t *testing.T, args ...string) (string, error) {
	t.Helper()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	root := NewCmdRoot(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &out})
	root.SetArgs(append([]string{"--kubeconfig", kc}, args...))
	err := root.Execute()
	if err != nil {
		out.WriteString(err.Error())
	}
	return out.String(), err
}

func TestAgentFlagValidation(t *testing.T) {
	t.Setenv(AgentTokenEnv, "")
	secret := "0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"token on the command line", []string{"agent", "--name=m1", "--proxy-server=https://198.51.100.1:8080", "--token=" + secret}, "--token is not accepted"},
		{"no name", []string{"agent", "--proxy-server=https://198.51.100.1:8080", "--token-file=/x"}, "--name is required"},
		{"no proxy", []string{"agent", "--name=m1", "--token-file=/x"}, "--proxy-server is required"},
		{"no token", []string{"agent", "--name=m1", "--proxy-server=https://198.51.100.1:8080"}, "no agent token"},
		{"bad pin", []string{"agent", "--name=m1", "--proxy-server=https://198.51.100.1:8080", "--token-file=/x", "--ca-cert-hash=md5:00"}, "--ca-cert-hash must be sha256"},
		{"bad metrics address", []string{"agent", "--name=m1", "--proxy-server=https://198.51.100.1:8080", "--token-file=/x", "--metrics-bind-address=9090"}, "--metrics-bind-address must be IP:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runRoot(t, tc.args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("want an error containing %q, got %v:\n%s", tc.want, err, out)
			}
			if strings.Contains(out, secret) {
				t.Fatalf("the rejected token was echoed:\n%s", out)
			}
		})
	}
}

// The proxy refuses agents over plain http unless --allow-plaintext-agents is given (a fake proxy
// on an http:// path would get the token and act with the agent's identity).
func TestProxyRefusesPlaintextAgentsByDefault(t *testing.T) {
	if o := NewProxyOptions(genericiooptions.IOStreams{}); o.AllowPlaintextAgents || !o.TLS {
		t.Fatalf("defaults: tls %v, allow-plaintext-agents %v; want TLS and plaintext agents refused", o.TLS, o.AllowPlaintextAgents)
	}
	// Tower v0.2.x agents (ws://, Clusters not moved to the ks-mc agent) are served by default.
	if o := NewProxyOptions(genericiooptions.IOStreams{}); o.TowerAgents != "auto" {
		t.Fatalf("default --tower-agents %q, want auto", o.TowerAgents)
	}
}

func TestProxyFlagValidation(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "--bind-address=not-an-ip"}, "is not an IP address"},
		{[]string{"proxy", "--port=0"}, "--port 0 is out of range"},
		{[]string{"proxy", "--tls=false", "--allow-plaintext-agents=false"}, "--tls=false needs --allow-plaintext-agents"},
		{[]string{"proxy", "--metrics-bind-address=9090"}, "--metrics-bind-address must be IP:port"},
		// Plaintext agents are refused by default: --tls=false alone leaves no way in.
		{[]string{"proxy", "--tls=false"}, "--tls=false needs --allow-plaintext-agents"},
		{[]string{"proxy", "--tower-agents=always"}, "--tower-agents must be auto or never"},
	} {
		out, err := runRoot(t, tc.args...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%v: want an error containing %q, got %v:\n%s", tc.args, tc.want, err, out)
		}
	}
}
