package cmd

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// testFactory returns a Factory on a kubeconfig with the given contexts (the first is current).
func testFactory(t *testing.T, contexts ...string) (*Factory, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	for _, c := range contexts {
		cfg.Clusters[c] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
		cfg.AuthInfos[c] = &clientcmdapi.AuthInfo{Token: "x"}
		cfg.Contexts[c] = &clientcmdapi.Context{Cluster: c, AuthInfo: c}
	}
	cfg.CurrentContext = contexts[0]
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &path
	var out, errb bytes.Buffer
	return &Factory{ConfigFlags: flags, Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errb}}, &out, &errb
}

func tty(b bool) *bool { return &b }

func TestJoinNonTTYWithoutHostNamesTheFlag(t *testing.T) {
	f, _, _ := testFactory(t, "member1", "host", "other")
	o := NewJoinOptions(f.Streams)
	o.TTY = tty(false)
	err := o.Complete(f, nil)
	var missing *MissingAnswerError
	if !errors.As(err, &missing) || missing.Flag != "--host-context" {
		t.Fatalf("err = %v, want a MissingAnswerError for --host-context", err)
	}
	if !strings.Contains(err.Error(), "--host-context") || !strings.Contains(err.Error(), "host") || strings.Contains(err.Error(), "  member1") {
		t.Errorf("message = %q (should name the flag and suggest the other contexts)", err)
	}
}

func TestJoinPromptsForHostOnTTY(t *testing.T) {
	f, _, _ := testFactory(t, "kind-Member_1", "host")
	o := NewJoinOptions(f.Streams)
	fp := &FakePrompter{Answers: []any{"host"}}
	o.TTY, o.Prompter = tty(true), fp
	if err := o.Complete(f, nil); err != nil {
		t.Fatal(err)
	}
	if o.Host.Context != "host" {
		t.Errorf("host context = %q", o.Host.Context)
	}
	if len(fp.Selects) != 1 || len(fp.Selects[0].Options) != 1 || fp.Selects[0].Options[0].Value != "host" {
		t.Errorf("offered %+v: the member's own context must not be offered", fp.Selects)
	}
	if o.Name != "kind-member-1" {
		t.Errorf("default name = %q, want kind-member-1 (sanitised context)", o.Name)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
}

func TestJoinNameHandling(t *testing.T) {
	// No usable name from the context, no TTY: an error naming --name.
	f, _, _ := testFactory(t, "@@@", "host")
	o := NewJoinOptions(f.Streams)
	o.TTY = tty(false)
	o.Host.Context = "host"
	err := o.Complete(f, nil)
	var missing *MissingAnswerError
	if !errors.As(err, &missing) || missing.Flag != "--name" {
		t.Fatalf("err = %v, want a MissingAnswerError for --name", err)
	}
	// An explicit invalid name is a usage error; a long context name is trimmed to 60.
	for _, tc := range []struct {
		ctx, name string
		wantErr   string
		wantName  string
	}{
		{"member1", "Bad_Name", "--name", ""},
		{"member1", strings.Repeat("a", 61), "at most 60", ""},
		{strings.Repeat("x", 70), "", "", strings.Repeat("x", 60)},
		{"arn:aws:eks:eu-west-1:1:cluster/prod", "", "", "arn-aws-eks-eu-west-1-1-cluster-prod"},
	} {
		f, _, _ := testFactory(t, tc.ctx, "host")
		o := NewJoinOptions(f.Streams)
		o.TTY = tty(false)
		o.Host.Context, o.Name = "host", tc.name
		if err := o.Complete(f, nil); err != nil {
			t.Fatalf("%s: complete: %v", tc.ctx, err)
		}
		err := o.Validate()
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s/%s: err = %v, want %q", tc.ctx, tc.name, err, tc.wantErr)
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.ctx, err)
		case tc.wantName != "" && o.Name != tc.wantName:
			t.Errorf("%s: name = %q, want %q", tc.ctx, o.Name, tc.wantName)
		}
	}
}

func TestJoinValidateFlags(t *testing.T) {
	f, _, _ := testFactory(t, "member1", "host")
	for args, want := range map[string]string{
		"same":   "also the member's context",
		"label":  "--label",
		"tunnel": "--tunnel",
		"dry":    "--dry-run",
		"output": "unsupported output format",
	} {
		o := NewJoinOptions(f.Streams)
		o.TTY = tty(false)
		o.Host.Context = "host"
		switch args {
		case "same":
			o.Host.Context = "member1"
		case "label":
			o.Labels = []string{"novalue"}
		case "tunnel":
			o.Tunnel = "wireguard"
		case "dry":
			o.DryRunFlag = "maybe"
		case "output":
			o.Output = "table"
		}
		err := o.Complete(f, nil)
		if err == nil {
			err = o.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", args, err, want)
		}
	}
}

// TestJoinPrintRedacts feeds the printer objects that still hold secrets: nothing may leak, in any
// output format.
func TestJoinPrintRedacts(t *testing.T) {
	const token = "tok3n-tok3n-tok3n-tok3n-tok3n-0123456789"
	const jwt = "JwtS3cretJwtS3cretJwtS3cret01234"
	agent, err := manifests.RenderAgent(kubesphere.TunnelKsMc, manifests.AgentValues{ClusterName: "m1", Token: token, ProxyServer: "http://1.2.3.4:8080"})
	if err != nil {
		t.Fatal(err)
	}
	tower, _ := manifests.RenderAgent(kubesphere.TunnelTower, manifests.AgentValues{ClusterName: "m1", Token: token, ProxyServer: "http://1.2.3.4:8080"})
	cc := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "installer.kubesphere.io/v1alpha1", "kind": "ClusterConfiguration",
		"metadata": map[string]any{"name": "ks-installer", "namespace": "kubesphere-system"},
		"spec":     map[string]any{"authentication": map[string]any{"jwtSecret": jwt}}}}
	cluster, _ := manifests.RenderCluster(manifests.ClusterValues{Name: "m1"})
	res := &installer.JoinResult{Name: "m1", HostContext: "host", Context: "member1", DryRun: installer.DryRunClient,
		HostObjects: []*unstructured.Unstructured{cluster}, MemberObjects: append(append([]*unstructured.Unstructured{cc}, agent...), tower...)}
	for _, format := range []string{"", "yaml", "json"} {
		f, out, errb := testFactory(t, "member1")
		o := NewJoinOptions(f.Streams)
		o.Output = format
		if err := o.print(res); err != nil {
			t.Fatal(err)
		}
		all := out.String() + errb.String()
		if strings.Contains(all, token) || strings.Contains(all, jwt) {
			t.Fatalf("-o %q leaks a secret:\n%s", format, all)
		}
		for _, want := range []string{"Cluster", "Deployment", "Secret", "redacted"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("-o %q output lacks %q:\n%s", format, want, out.String())
			}
		}
		if format != "json" && !strings.Contains(out.String(), "# member member1: Deployment kubesphere-system/cluster-agent") {
			t.Errorf("YAML stream lacks the per-cluster header:\n%s", out.String())
		}
	}
}

func TestHostFlagsClients(t *testing.T) {
	f, _, _ := testFactory(t, "member1", "host")
	h := hostFlags{Context: "host"}
	c, err := h.clients(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.Context != "host" || c.Config.Host != "https://127.0.0.1:1" {
		t.Errorf("clients = %+v", c)
	}
	// Another kubeconfig: its current context.
	other, _, _ := testFactory(t, "far-host")
	h = hostFlags{Kubeconfig: *other.ConfigFlags.KubeConfig}
	c, err = h.clients(f)
	if err != nil || c.Context != "far-host" {
		t.Fatalf("clients = %+v, %v", c, err)
	}
	h = hostFlags{Context: "nope"}
	if _, err := h.clients(f); err == nil {
		t.Error("unknown context accepted")
	}
	_ = os.Remove(*other.ConfigFlags.KubeConfig)
}

func TestCapVerbosity(t *testing.T) {
	var l klog.Level
	_ = l.Set("9")
	defer func() { _ = l.Set("0") }()
	var b bytes.Buffer
	capVerbosity(&b)
	if klog.V(8).Enabled() || !klog.V(7).Enabled() || !strings.Contains(b.String(), "capped at 7") {
		t.Errorf("verbosity not capped (V(8) %v), warning %q", klog.V(8).Enabled(), b.String())
	}
	b.Reset()
	capVerbosity(&b)
	if b.Len() != 0 {
		t.Errorf("warned without need: %q", b.String())
	}
}
