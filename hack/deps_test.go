// Package hack holds the repository's build tools (dist, image) and, here, the test of the
// import rules of docs/CONVENTIONS.md.
package hack

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ks-mc/ks-mc"

// pkgDeps maps every package of the module to its transitive non-test imports (go list's Deps).
func pkgDeps(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", module+"/...")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	deps := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 {
			deps[f[0]] = f[1:]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return deps
}

// under reports whether pkg is dir or a package below it.
func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// std reports whether an import path is the standard library's (no dot in its first element;
// vendored std packages included).
func std(pkg string) bool {
	first, _, _ := strings.Cut(pkg, "/")
	return !strings.Contains(first, ".")
}

// TestImportRules: the arrows of docs/CONVENTIONS.md, on the non-test imports (transitively), so
// that none can regress. Each rule names the packages it applies to and what they must not
// depend on.
func TestImportRules(t *testing.T) {
	const (
		cmdPkg     = module + "/pkg/cmd"
		installer  = module + "/pkg/installer"
		tunnel     = module + "/pkg/tunnel"
		manifests  = module + "/pkg/manifests"
		kubesphere = module + "/pkg/kubesphere"
		testDir    = module + "/test"
	)
	rules := []struct {
		name      string
		applies   func(pkg string) bool
		forbidden func(dep string) bool
	}{
		{"pkg/installer does not import pkg/tunnel (both stand on pkg/kubesphere)",
			func(p string) bool { return under(p, installer) }, func(d string) bool { return under(d, tunnel) }},
		{"pkg/tunnel does not import pkg/installer",
			func(p string) bool { return under(p, tunnel) }, func(d string) bool { return under(d, installer) }},
		{"pkg/manifests imports neither pkg/installer nor pkg/tunnel",
			func(p string) bool { return under(p, manifests) }, func(d string) bool { return under(d, installer) || under(d, tunnel) }},
		{"pkg/kubesphere is a leaf: the standard library only (no ks-mc package, no Kubernetes)",
			func(p string) bool { return under(p, kubesphere) }, func(d string) bool { return !std(d) }},
		{"pkg/tunnel, the wire code, imports no Kubernetes package (pkg/tunnel/kube is its Kubernetes side)",
			func(p string) bool { return p == tunnel },
			func(d string) bool { return strings.HasPrefix(d, "k8s.io/") || strings.HasPrefix(d, "sigs.k8s.io/") }},
		{"only cmd/ imports pkg/cmd (imports point down)",
			func(p string) bool { return under(p, module+"/pkg") && !under(p, cmdPkg) }, func(d string) bool { return under(d, cmdPkg) }},
		{"nothing outside test/ imports test/",
			func(p string) bool { return !under(p, testDir) }, func(d string) bool { return under(d, testDir) }},
	}
	deps := pkgDeps(t)
	for _, p := range []string{installer, tunnel, tunnel + "/kube", manifests, kubesphere} {
		if _, ok := deps[p]; !ok {
			t.Fatalf("go list did not list %s", p)
		}
	}
	for _, r := range rules {
		for pkg, ds := range deps {
			if !r.applies(pkg) {
				continue
			}
			for _, d := range ds {
				if r.forbidden(d) {
					t.Errorf("%s: %s depends on %s", r.name, pkg, d)
				}
			}
		}
	}
}
