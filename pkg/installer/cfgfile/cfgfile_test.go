package cfgfile

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pmezard/go-difflib/difflib"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// testSecret is a made-up jwtSecret (32 alphanumerics, as KubeSphere generates them).
const testSecret = "Tst0jwtSecretFORgoldenFILES12345"

var (
	hostEdits = []Edit{
		{Path: []string{"spec", "multicluster", "clusterRole"}, Value: "host"},
		{Path: []string{"spec", "multicluster", "proxyPublishAddress"}, Value: "http://203.0.113.10:30881"},
	}
	memberEdits = []Edit{
		{Path: []string{"spec", "authentication", "jwtSecret"}, Value: testSecret},
		{Path: []string{"spec", "multicluster", "clusterRole"}, Value: "member"},
		{Path: []string{"spec", "authentication", "oauthOptions", "accessTokenMaxAge"}, Value: int64(0)},
	}
	jwtPath = []string{"spec", "authentication", "jwtSecret"}
)

var goldenInputs = []string{
	"ks-installer-v3.4.1.yaml",
	"kubekey-v3.4.1.yaml",
	"edge/crlf.yaml",
	"edge/flow.yaml",
	"edge/comments.yaml",
	"edge/no-newline.yaml",
	"edge/missing-sections.yaml",
	"edge/empty-values.yaml",
	"edge/json.json",
}

func goldenName(in, role string) string {
	base := strings.ReplaceAll(in, "/", "-")
	ext := filepath.Ext(base)
	return filepath.Join("testdata", "golden", strings.TrimSuffix(base, ext)+"."+role+ext)
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the result (run go test -update after checking):\n%s", path, UnifiedDiff(path, want, got))
	}
}

// TestGolden edits each input as init-host -f and join -f would, compares with the golden
// files, and checks that only the intended lines changed.
func TestGolden(t *testing.T) {
	for _, in := range goldenInputs {
		for _, tc := range []struct {
			role  string
			edits []Edit
		}{{"host", hostEdits}, {"member", memberEdits}} {
			t.Run(in+"/"+tc.role, func(t *testing.T) {
				data, err := os.ReadFile(filepath.Join("testdata", in))
				if err != nil {
					t.Fatal(err)
				}
				f, err := Parse(data)
				if err != nil {
					t.Fatal(err)
				}
				out, err := f.Apply(tc.edits)
				if err != nil {
					t.Fatal(err)
				}
				checkGolden(t, goldenName(in, tc.role), out)
				assertOnlyIntendedLines(t, data, out, tc.edits)
				// Idempotent: the same edits on the result change nothing.
				g, err := Parse(out)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range tc.edits {
					if v, ok := g.Get(e.Path...); !ok || normalize(v) != normalize(e.Value) {
						t.Errorf("%s: got %v after the edit", strings.Join(e.Path, "."), v)
					}
				}
				// The shown versions never hold the secret.
				before, after, err := f.Redacted(tc.edits, jwtPath)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(string(after), testSecret) || strings.Contains(string(before), "old-secret-value") || strings.Contains(string(after), "old-secret-value") {
					t.Error("a redacted version holds a secret")
				}
			})
		}
	}
}

// assertOnlyIntendedLines diffs the lines: a removed line must be the line of an edited value
// (and keeps its comment); an added line must hold an edited key or a section on its path.
func assertOnlyIntendedLines(t *testing.T, a, b []byte, edits []Edit) {
	t.Helper()
	al, bl := difflib.SplitLines(string(a)), difflib.SplitLines(string(b))
	keys := map[string]bool{}
	leaves := map[string]bool{}
	for _, e := range edits {
		for _, k := range e.Path {
			keys[k] = true
		}
		leaves[e.Path[len(e.Path)-1]] = true
	}
	hasKey := func(line string, set map[string]bool) bool {
		for k := range set {
			if strings.Contains(line, k+":") || strings.Contains(line, `"`+k+`":`) {
				return true
			}
		}
		return false
	}
	m := difflib.NewMatcher(al, bl)
	removed := 0
	for _, op := range m.GetOpCodes() {
		if op.Tag == 'e' {
			continue
		}
		for _, l := range al[op.I1:op.I2] {
			removed++
			if !hasKey(l, keys) && !strings.HasSuffix(strings.TrimRight(l, "\r\n"), "}") {
				t.Errorf("a line that holds no edited value changed: %q", l)
			}
			if i := strings.Index(l, " #"); i >= 0 {
				found := false
				for _, nl := range bl[op.J1:op.J2] {
					if strings.Contains(nl, strings.TrimRight(l[i:], "\r\n")) {
						found = true
					}
				}
				if !found {
					t.Errorf("the comment of a changed line was lost: %q", l)
				}
			}
		}
		for _, l := range bl[op.J1:op.J2] {
			if !hasKey(l, keys) {
				t.Errorf("an added line holds no edited key: %q", l)
			}
		}
	}
	if removed > len(edits) {
		t.Errorf("%d lines changed for %d edits", removed, len(edits))
	}
}

func TestNoChangeIsByteIdentical(t *testing.T) {
	data, _ := os.ReadFile("testdata/golden/ks-installer-v3.4.1.member.yaml")
	f, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	out, err := f.Apply(nil)
	if err != nil || string(out) != string(data) {
		t.Fatalf("no edits changed the file (err %v)", err)
	}
}

func TestParseErrors(t *testing.T) {
	cc := func(extra string) string {
		return "apiVersion: installer.kubesphere.io/v1alpha1\nkind: ClusterConfiguration\nmetadata:\n  name: ks-installer\n" + extra + "spec:\n  multicluster:\n    clusterRole: none\n"
	}
	kk := "apiVersion: kubekey.kubesphere.io/v1alpha2\nkind: Cluster\nmetadata:\n  name: sample\n---\n"
	for _, tc := range []struct {
		name, in string
		want     error
		msg      string
	}{
		{"not yaml", "a: [b\n", ErrNotYAML, ""},
		{"duplicate key", "a: 1\na: 2\n", ErrNoClusterConfiguration, ""},
		{"no cc", "apiVersion: v1\nkind: ConfigMap\n", ErrNoClusterConfiguration, ""},
		{"empty", "", ErrNoClusterConfiguration, ""},
		{"two", cc("") + "---\n" + cc(""), ErrManyClusterConfigurations, ""},
		{"kubekey no version", kk + cc(""), ErrVersion, "no metadata.labels.version"},
		{"kubekey v4", kk + cc("  labels:\n    version: v4.1.2\n"), ErrVersion, "KubeSphere 4"},
		{"unknown version", kk + cc("  labels:\n    version: nightly-20230101\n"), ErrVersion, "not a KubeSphere release"},
		{"v2", cc("  labels:\n    version: v2.1.1\n"), ErrVersion, "3.x"},
		{"no spec", "apiVersion: installer.kubesphere.io/v1alpha1\nkind: ClusterConfiguration\n", ErrUnsupported, "no spec"},
		{"bom", "\xef\xbb\xbf" + cc(""), ErrUnsupported, "byte order mark"},
		{"aliases (billion laughs)", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n---\n" + cc(""), ErrUnsupported, "aliases"},
		{"too long", cc("") + "# " + strings.Repeat("x", MaxSize) + "\n", ErrUnsupported, "larger than"},
		{"stray carriage return", cc("") + "zone: a\rb\n", ErrUnsupported, "carriage returns"},
		{"unicode line separator", cc("") + "# a\u2028b\n", ErrUnsupported, "line separators"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
	// A ks-installer file without a version label is fine (ks-installer's image decides).
	if _, err := Parse([]byte(cc(""))); err != nil {
		t.Fatal(err)
	}
}

func TestApplyRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"anchor", "apiVersion: installer.kubesphere.io/v1alpha1\nkind: ClusterConfiguration\nspec:\n  multicluster:\n    clusterRole: &r none\n"},
		{"not a mapping", "apiVersion: installer.kubesphere.io/v1alpha1\nkind: ClusterConfiguration\nspec:\n  multicluster: [a]\n"},
		{"block scalar", "apiVersion: installer.kubesphere.io/v1alpha1\nkind: ClusterConfiguration\nspec:\n  multicluster:\n    clusterRole: |\n      none\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Apply(hostEdits); !errors.Is(err, ErrUnsupported) {
				t.Fatalf("got %v, want ErrUnsupported", err)
			}
		})
	}
}

func TestErrorsHoldNoValues(t *testing.T) {
	in := "apiVersion: installer.kubesphere.io/v1alpha1\nkind: ClusterConfiguration\nspec:\n  authentication:\n    jwtSecret: &s SECRETVALUE123\n"
	f, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Apply(memberEdits)
	if err == nil || strings.Contains(err.Error(), "SECRETVALUE123") || strings.Contains(err.Error(), testSecret) {
		t.Fatalf("got %v", err)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cc.yaml")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckWritable(p); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	b, _ := os.ReadFile(p)
	if string(b) != "new" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("got %q mode %v", b, fi.Mode())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left temporary files: %v", entries)
	}
	// A failed write (the target is a directory now) leaves no temporary file behind.
	d2 := filepath.Join(dir, "sub")
	_ = os.Mkdir(d2, 0o755)
	if err := WriteFile(filepath.Join(d2, "missing", "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	// A failed rename (the target is a non-empty directory) leaves the target and no
	// temporary file.
	_ = os.WriteFile(filepath.Join(d2, "keep"), []byte("x"), 0o644)
	if err := WriteFile(d2, []byte("x"), 0o600); err == nil {
		t.Fatal("rename over a directory succeeded")
	}
	if b, err := os.ReadFile(filepath.Join(d2, "keep")); err != nil || string(b) != "x" {
		t.Fatal("the failed write damaged the target")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Fatalf("a failed write left files behind: %v", entries)
	}
	link := filepath.Join(dir, "link.yaml")
	_ = os.Symlink(p, link)
	if _, err := CheckWritable(link); !errors.Is(err, ErrNotWritable) || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlink: got %v", err)
	}
	if os.Geteuid() != 0 {
		_ = os.Chmod(p, 0o400)
		if _, err := CheckWritable(p); !errors.Is(err, ErrNotWritable) {
			t.Fatalf("read-only: got %v", err)
		}
	}
}
