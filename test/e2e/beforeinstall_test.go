//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// TestBeforeInstall is the guide's "before installation" path (issue 11): init-host -f on the
// host's cluster-configuration.yaml (ks-installer v3.4.1's real file), join -f on the member's
// KubeKey config-sample.yaml (as kk v3.1 generates it for v3.4.1), then the KubeSphere stand-in
// installs each cluster from its file, and a plain join finishes without changing the member's
// ClusterConfiguration. The host's jwtSecret appears in no command output; --dry-run leaves the
// files byte-identical.
func TestBeforeInstall(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1"}})
	host, member := s.Cluster("host"), s.Cluster("member1")
	var outs outputs
	run := func(args ...string) result { return outs.add(ksmc(t, s, args...)) }

	dir := t.TempDir()
	hostFile := filepath.Join(dir, "cluster-configuration.yaml")
	memberFile := filepath.Join(dir, "config-sample.yaml")
	copyFixture(t, "ks-installer-v3.4.1.yaml", hostFile)
	copyFixture(t, "kubekey-v3.4.1.yaml", memberFile)
	proxyAddr := fmt.Sprintf("http://%s:8080", host.NodeIP)

	// init-host -f: the dry run shows the diff and changes nothing.
	before := snapshotFile(t, hostFile)
	r := run("init-host", "-f", hostFile, "--proxy-publish-address", proxyAddr, "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "+    clusterRole: host  # host | member | none") || !strings.Contains(r.stdout, "+    proxyPublishAddress: "+proxyAddr) {
		t.Fatalf("init-host -f --dry-run: want a diff:\n%s", r)
	}
	before.assertSame(t, "init-host -f --dry-run")
	if r := run("init-host", "-f", hostFile, "--proxy-publish-address", proxyAddr); r.code != 0 {
		t.Fatalf("init-host -f: %s", r)
	}
	edited := snapshotFile(t, hostFile)
	if d := lineDiff(before.data, edited.data); d != "-    clusterRole: none|+    clusterRole: host|+    proxyPublishAddress: "+proxyAddr {
		t.Errorf("init-host -f changed other lines: %q", d)
	}
	if edited.mode != 0o644 {
		t.Errorf("init-host -f changed the mode to %o", edited.mode)
	}
	r = run("init-host", "-f", hostFile, "--proxy-publish-address", proxyAddr)
	if r.code != 0 || !strings.Contains(r.stderr, "no changes") {
		t.Fatalf("init-host -f re-run: %s", r)
	}
	edited.assertSame(t, "init-host -f re-run")

	// The host is installed from its file.
	installFromFile(t, host, hostFile)
	eventually(t, 2*time.Minute, "the host installed from its file", func() error {
		if st, _, _ := unstructured.NestedString(ccOf(t, host).Object, "status", "multicluster", "status"); st != "enabled" {
			return fmt.Errorf("status.multicluster.status %q", st)
		}
		return nil
	})
	hostJWT := jwtOf(t, host)
	hostRV := ccOf(t, host).GetResourceVersion()

	// join -f against a cluster that is no host: refused, the file untouched.
	mBefore := snapshotFile(t, memberFile)
	if r := run("join", "--host-context", "member1", "-f", memberFile); r.code == 0 || !strings.Contains(r.stderr, "not host") {
		t.Fatalf("join -f with a non-host: want a refusal:\n%s", r)
	}
	mBefore.assertSame(t, "join -f with a non-host")
	// The dry run shows the secret redacted.
	r = run("join", "--host-context", "host", "-f", memberFile, "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, `+    jwtSecret: "<redacted>"`) || !strings.Contains(r.stdout, "+    clusterRole: member") {
		t.Fatalf("join -f --dry-run: want a redacted diff:\n%s", r)
	}
	mBefore.assertSame(t, "join -f --dry-run")
	r = run("join", "--host-context", "host", "-f", memberFile)
	if r.code != 0 || !strings.Contains(r.stderr, "0600") {
		t.Fatalf("join -f: %s", r)
	}
	mEdited := snapshotFile(t, memberFile)
	if mEdited.mode != 0o600 {
		t.Errorf("join -f left mode %o, want 0600", mEdited.mode)
	}
	if !bytes.Contains(mEdited.data, []byte(`jwtSecret: "`+hostJWT+`"`)) {
		t.Error("join -f did not write the host's jwtSecret")
	}
	wantDiff := `-    jwtSecret: ""|+    jwtSecret: "` + hostJWT + `"|+    oauthOptions:|+      accessTokenMaxAge: 0|-    clusterRole: none|+    clusterRole: member`
	if d := lineDiff(mBefore.data, mEdited.data); d != wantDiff {
		t.Errorf("join -f changed other lines: %q", strings.ReplaceAll(d, hostJWT, "<host jwt>"))
	}
	if rv := ccOf(t, host).GetResourceVersion(); rv != hostRV {
		t.Errorf("join -f changed the host's ClusterConfiguration (resourceVersion %s -> %s)", hostRV, rv)
	}
	r = run("join", "--host-context", "host", "-f", memberFile, "-o", "json")
	if r.code != 0 || !strings.Contains(r.stderr, "no changes") || !strings.Contains(r.stdout, `"changed": false`) {
		t.Fatalf("join -f re-run: %s", r)
	}
	mEdited.assertSame(t, "join -f re-run")

	// The member is installed from its file; a plain join finds role and secret in place.
	installFromFile(t, member, memberFile)
	eventually(t, 2*time.Minute, "the member installed from its file", func() error {
		if jwtOf(t, member) != hostJWT {
			return fmt.Errorf("member's kubesphere-config does not hold the host's jwtSecret yet")
		}
		if st, _, _ := unstructured.NestedString(ccOf(t, member).Object, "status", "core", "status"); st != "enabled" {
			return fmt.Errorf("status.core.status %q", st)
		}
		return nil
	})
	cc := ccOf(t, member)
	memberRV, memberSpec := cc.GetResourceVersion(), mustJSON(cc.Object["spec"])
	r = run("join", "--context", "member1", "--host-context", "host", "--timeout", "3m", "-o", "json")
	if r.code != 0 {
		t.Fatalf("plain join after installing from the file: %s", r)
	}
	var res struct {
		Changes []struct{ Object, Action string } `json:"changes"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("join -o json: %v\n%s", err, r.stdout)
	}
	for _, c := range res.Changes {
		if strings.Contains(c.Object, "ClusterConfiguration") {
			t.Errorf("join changed the member's ClusterConfiguration: %+v", c)
		}
	}
	if !strings.Contains(r.stderr, "already in place") {
		t.Errorf("join does not report the member settings as already in place:\n%s", r.stderr)
	}
	cc = ccOf(t, member)
	if cc.GetResourceVersion() != memberRV || mustJSON(cc.Object["spec"]) != memberSpec {
		t.Errorf("join changed the member's ClusterConfiguration (resourceVersion %s -> %s)", memberRV, cc.GetResourceVersion())
	}
	if c := clusterObj(t, host, "member1"); c == nil || condition(c, "Ready") != "True" {
		t.Fatalf("Cluster member1 is not Ready: %v", c)
	}
	outs.assertNoSecret(t, "host jwtSecret", hostJWT)
}

func copyFixture(t *testing.T, name, to string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "pkg", "installer", "cfgfile", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(to, 0o644)
}

type fileSnapshot struct {
	path  string
	data  []byte
	mode  os.FileMode
	mtime time.Time
}

func snapshotFile(t *testing.T, path string) fileSnapshot {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileSnapshot{path: path, data: b, mode: fi.Mode().Perm(), mtime: fi.ModTime()}
}

func (s fileSnapshot) assertSame(t *testing.T, what string) {
	t.Helper()
	now := snapshotFile(t, s.path)
	if !bytes.Equal(now.data, s.data) || now.mode != s.mode || !now.mtime.Equal(s.mtime) {
		t.Errorf("%s changed %s (bytes equal %t, mode %o -> %o, mtime %s -> %s)", what, filepath.Base(s.path),
			bytes.Equal(now.data, s.data), s.mode, now.mode, s.mtime, now.mtime)
	}
}

// lineDiff lists the removed (-) and added (+) lines between a and b, joined by "|" (a simple
// diff: the files differ in a few places and keep their order).
func lineDiff(a, b []byte) string {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	var out []string
	i, j := 0, 0
	for i < len(al) || j < len(bl) {
		if i < len(al) && j < len(bl) && al[i] == bl[j] {
			i, j = i+1, j+1
			continue
		}
		// Find the next line of a that appears later in b (resynchronise).
		next := -1
		for k := j; k < len(bl) && i < len(al); k++ {
			if bl[k] == al[i] {
				next = k
				break
			}
		}
		if next >= 0 {
			for ; j < next; j++ {
				out = append(out, "+"+strings.SplitN(bl[j], "  #", 2)[0])
			}
			continue
		}
		if i < len(al) {
			out = append(out, "-"+strings.SplitN(al[i], "  #", 2)[0])
			i++
		}
		if j < len(bl) && (i >= len(al) || bl[j] != al[i]) {
			out = append(out, "+"+strings.SplitN(bl[j], "  #", 2)[0])
			j++
		}
	}
	return strings.Join(out, "|")
}

func installFromFile(t *testing.T, c *sandbox.Cluster, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := fakeks.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := fakeks.InstallFromFile(context.Background(), cl, b); err != nil {
		t.Fatalf("install %s from %s: %v", c.Name, filepath.Base(path), err)
	}
}
