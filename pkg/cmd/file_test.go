package cmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ks-mc/ks-mc/pkg/installer"
)

// The host jwtSecret of newCmdCluster's kubesphere-config.
const cmdTestJWT = "s3cretJWTvalueNEVERprinted0123456"

func fixture(t *testing.T, name string, mode os.FileMode) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "installer", "cfgfile", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(name))
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(p, mode)
	return p
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cc.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type fileCmdRun struct {
	stdout, stderr string
	err            error
	contacted      int
}

func runInitHostFile(t *testing.T, stdin string, args ...string) fileCmdRun {
	t.Helper()
	var out, errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut}
	f := &Factory{ConfigFlags: genericclioptions.NewConfigFlags(true), Streams: streams}
	o := NewInitHostOptions(streams)
	r := fileCmdRun{}
	f.Clients = func(Selection) (*installer.Clients, error) { r.contacted++; return nil, os.ErrInvalid }
	cmd := newCmdInitHost(f, o)
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	r.err = cmd.Execute()
	r.stdout, r.stderr = out.String(), errOut.String()
	return r
}

func fileState(t *testing.T, p string) (string, os.FileInfo) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), fi
}

func TestInitHostFile(t *testing.T) {
	p := fixture(t, "kubekey-v3.4.1.yaml", 0o640)
	orig, fi0 := fileState(t, p)

	r := runInitHostFile(t, "", "-f", p, "--dry-run")
	if r.err != nil || !strings.Contains(r.stdout, "-    clusterRole: none\n+    clusterRole: host\n") || !strings.Contains(r.stderr, "was not changed") {
		t.Fatalf("dry run: %+v", r)
	}
	if now, fi := fileState(t, p); now != orig || !fi.ModTime().Equal(fi0.ModTime()) {
		t.Fatal("--dry-run changed the file")
	}
	r = runInitHostFile(t, "", "-f", p, "--proxy-publish-address", "HTTP://Example.COM:30881", "-o", "json")
	if r.err != nil || !strings.Contains(r.stdout, `"to": "http://example.com:30881"`) || !strings.Contains(r.stdout, `"changed": true`) {
		t.Fatalf("edit: %+v", r)
	}
	now, fi := fileState(t, p)
	if !strings.Contains(now, "    clusterRole: host\n    proxyPublishAddress: http://example.com:30881\n") || fi.Mode().Perm() != 0o640 {
		t.Fatalf("edited file (mode %v):\n%s", fi.Mode(), now)
	}
	// Re-running changes nothing and says so; the file keeps its mtime.
	r = runInitHostFile(t, "", "-f", p, "--proxy-publish-address", "http://example.com:30881")
	if r.err != nil || !strings.Contains(r.stderr, "no changes") {
		t.Fatalf("re-run: %+v", r)
	}
	if again, fi2 := fileState(t, p); again != now || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Fatal("re-run touched the file")
	}
	// stdin to stdout.
	r = runInitHostFile(t, orig, "-f", "-")
	if r.err != nil || r.stdout != strings.Replace(orig, "    clusterRole: none\n", "    clusterRole: host\n", 1) {
		t.Fatalf("-f -: %+v", r)
	}
	if r.contacted != 0 {
		t.Fatal("init-host -f contacted a cluster")
	}
}

func TestInitHostFileErrors(t *testing.T) {
	cc := func(role, labels string) string {
		return "apiVersion: installer.kubesphere.io/v1alpha1\nkind: ClusterConfiguration\nmetadata:\n  name: ks-installer\n" + labels +
			"spec:\n  multicluster:\n    clusterRole: " + role + "\n"
	}
	kk := "apiVersion: kubekey.kubesphere.io/v1alpha2\nkind: Cluster\nmetadata:\n  name: sample\n---\n"
	dir := t.TempDir()
	real := filepath.Join(dir, "real.yaml")
	_ = os.WriteFile(real, []byte(cc("none", "")), 0o644)
	link := filepath.Join(dir, "link.yaml")
	_ = os.Symlink(real, link)
	for _, tc := range []struct {
		name, content, want string
		args                []string
	}{
		{"not yaml", "a: [b\n", "not YAML", nil},
		{"no cc", "apiVersion: v1\nkind: ConfigMap\n", "no ClusterConfiguration", nil},
		{"two", cc("none", "") + "---\n" + cc("none", ""), "more than one ClusterConfiguration", nil},
		{"kubesphere 4", kk + cc("none", "  labels:\n    version: v4.1.2\n"), "KubeSphere 4", nil},
		{"unknown version", kk + cc("none", "  labels:\n    version: banana\n"), "not a KubeSphere release", nil},
		{"member without force", cc("member", ""), "pass --force", nil},
		{"unknown role", cc("leader", ""), "unknown spec.multicluster.clusterRole", nil},
		{"server dry run", cc("none", ""), "--dry-run=server needs a cluster", []string{"--dry-run=server"}},
		{"cluster flag", cc("none", ""), "--no-restart is not used with -f", []string{"--no-restart"}},
		{"bad address", cc("none", ""), "--proxy-publish-address", []string{"--proxy-publish-address", "10.0.0.1:80"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeTemp(t, tc.content)
			before, fi0 := fileState(t, p)
			r := runInitHostFile(t, "", append([]string{"-f", p}, tc.args...)...)
			if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", r.err, tc.want)
			}
			if after, fi := fileState(t, p); after != before || !fi.ModTime().Equal(fi0.ModTime()) {
				t.Fatal("the file changed")
			}
		})
	}
	r := runInitHostFile(t, "", "-f", link)
	if r.err == nil || !strings.Contains(r.err.Error(), "symlink") {
		t.Fatalf("symlink: %v", r.err)
	}
	// A member file becomes a host file with --force, with a warning.
	p := writeTemp(t, cc("member", ""))
	r = runInitHostFile(t, "", "-f", p, "--force")
	if r.err != nil || !strings.Contains(r.stderr, "because of --force") {
		t.Fatalf("--force: %+v", r)
	}
}

func runJoinFile(t *testing.T, c *cmdCluster, stdin string, out *bytes.Buffer, args func(o *JoinOptions)) (string, error) {
	t.Helper()
	var errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: out, ErrOut: &errOut}
	f := &Factory{ConfigFlags: genericclioptions.NewConfigFlags(true), Streams: streams}
	o := NewJoinOptions(streams)
	o.Host.Context = "test-host"
	useClients(f, nil, &installer.Clients{Kube: c.kube, Dynamic: c.dyn, Context: "test-host"})
	args(o)
	err := o.Complete(f, nil)
	if err == nil {
		err = o.Validate()
	}
	if err == nil {
		err = o.Run(t.Context())
	}
	if strings.Contains(errOut.String(), cmdTestJWT) {
		t.Errorf("the jwtSecret is on stderr")
	}
	if err != nil && strings.Contains(err.Error(), cmdTestJWT) {
		t.Errorf("the jwtSecret is in an error")
	}
	return errOut.String(), err
}

func TestJoinFile(t *testing.T) {
	kubeSystem := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: "host-uid"}}
	host := newCmdCluster(t, "host", true, kubeSystem)
	p := fixture(t, "ks-installer-v3.4.1.yaml", 0o644)
	orig, _ := fileState(t, p)

	var out bytes.Buffer
	stderr, err := runJoinFile(t, host, "", &out, func(o *JoinOptions) { o.File = p; o.DryRunFlag = "client" })
	if err != nil || !strings.Contains(out.String(), `+    jwtSecret: "<redacted>"`) || strings.Contains(out.String(), cmdTestJWT) {
		t.Fatalf("dry run: %v\n%s\n%s", err, out.String(), stderr)
	}
	if now, _ := fileState(t, p); now != orig {
		t.Fatal("--dry-run changed the file")
	}
	out.Reset()
	stderr, err = runJoinFile(t, host, "", &out, func(o *JoinOptions) { o.File = p; o.Output = "yaml" })
	if err != nil || strings.Contains(out.String(), cmdTestJWT) || !strings.Contains(out.String(), "<redacted>") {
		t.Fatalf("join -f -o yaml: %v\n%s\n%s", err, out.String(), stderr)
	}
	now, fi := fileState(t, p)
	if fi.Mode().Perm() != 0o600 || !strings.Contains(stderr, "was mode 0644: it is 0600 now") {
		t.Fatalf("mode %v, stderr:\n%s", fi.Mode(), stderr)
	}
	if !strings.Contains(now, `    jwtSecret: "`+cmdTestJWT+`"           # Keep the jwtSecret`) || !strings.Contains(now, "    clusterRole: member  # host") {
		t.Fatalf("the file lacks the member settings")
	}
	if m := host.mutations(); len(m) != 0 {
		t.Fatalf("join -f changed the host: %v", m)
	}
	// stdin to stdout: the secret goes to stdout (the file), never to stderr.
	out.Reset()
	_, err = runJoinFile(t, host, orig, &out, func(o *JoinOptions) { o.File = "-" })
	if err != nil || out.String() != now {
		t.Fatalf("-f -: %v", err)
	}
	// A host file needs --force; a host that is no host is refused; the file stays.
	hostFile := writeTemp(t, strings.Replace(orig, "clusterRole: none", "clusterRole: host", 1))
	if _, err := runJoinFile(t, host, "", &out, func(o *JoinOptions) { o.File = hostFile }); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("host file: %v", err)
	}
	notHost := newCmdCluster(t, "none", false)
	q := fixture(t, "kubekey-v3.4.1.yaml", 0o644)
	before, _ := fileState(t, q)
	if _, err := runJoinFile(t, notHost, "", &out, func(o *JoinOptions) { o.File = q }); err == nil || !strings.Contains(err.Error(), "preflight") && !strings.Contains(err.Error(), "not host") {
		t.Fatalf("not a host: %v", err)
	}
	if after, _ := fileState(t, q); after != before {
		t.Fatal("a refused join -f changed the file")
	}
	if _, err := runJoinFile(t, host, "", &out, func(o *JoinOptions) { o.Force = true; o.Name = "m1" }); err == nil || !strings.Contains(err.Error(), "--force is only used with -f") {
		t.Fatalf("--force without -f: %v", err)
	}
}
