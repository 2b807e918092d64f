//go:build release

package release

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

type krewManifest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version   string `json:"version"`
		Platforms []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			SHA256 string `json:"sha256"`
			Bin    string `json:"bin"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
		} `json:"platforms"`
	} `json:"spec"`
}

func readManifest(t *testing.T, path string) krewManifest {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m krewManifest
	if err := yaml.UnmarshalStrict(raw, &m); err != nil {
		// Strict on our subset would reject caveats etc.; fall back to lenient parsing.
		if err := yaml.Unmarshal(raw, &m); err != nil {
			t.Fatalf("parse %s: %v", path, err)
		}
	}
	return m
}

func goRun(t *testing.T, pkg string, args ...string) ([]byte, error) {
	t.Helper()
	return exec.Command("go", append([]string{"run", pkg}, args...)...).CombinedOutput()
}

// krewEnv is a minimal environment for krew and kubectl: a private KREW_ROOT and HOME, no
// upgrade check, PATH with KREW_ROOT/bin first (kubectl's plugin discovery).
func krewEnv(t *testing.T, krewRoot string, extra ...string) []string {
	t.Helper()
	home := t.TempDir()
	env := []string{
		"KREW_ROOT=" + krewRoot,
		"KREW_NO_UPGRADE_CHECK=1",
		"HOME=" + home,
		"KUBECONFIG=" + filepath.Join(home, "no-kubeconfig"),
		"PATH=" + filepath.Join(krewRoot, "bin") + string(os.PathListSeparator) + os.Getenv("PATH"),
	}
	return append(env, extra...)
}

func runCmd(t *testing.T, env []string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// TestValidateKrewManifest validates plugins.yaml the way krew-index CI does: krew's own
// validate-krew-manifest (structure, supported and non-overlapping platform selectors), then,
// instead of its install step (which downloads the URIs), an offline install of every platform's
// archive with KREW_OS/KREW_ARCH, checking that the LICENSE, the binary and the completion helper
// are extracted.
func TestValidateKrewManifest(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "ks-mc.yaml") // validate-krew-manifest wants NAME.yaml
	raw, err := os.ReadFile(renderedKrew)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(manifest, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(validateBin, "-manifest", manifest, "-skip-install").CombinedOutput()
	if err != nil {
		t.Fatalf("validate-krew-manifest: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "structural validation OK") || !strings.Contains(string(out), "no overlapping spec.platform[].selector") {
		t.Fatalf("validate-krew-manifest did not run its checks:\n%s", out)
	}

	m := readManifest(t, manifest)
	if len(m.Spec.Platforms) != len(releasePlatfms) {
		t.Fatalf("%d platforms in the manifest, want %d", len(m.Spec.Platforms), len(releasePlatfms))
	}
	for _, p := range releasePlatfms {
		osName, arch := splitPlatform(p)
		t.Run(p, func(t *testing.T) {
			root := t.TempDir()
			env := krewEnv(t, root, "KREW_OS="+osName, "KREW_ARCH="+arch)
			_, stderr, err := runCmd(t, env, krewBin, "install", "--manifest="+manifest, "--archive="+filepath.Join(distDir, archiveName(p)))
			if err != nil {
				t.Fatalf("krew install for %s: %v\n%s", p, err, stderr)
			}
			store := filepath.Join(root, "store", "ks-mc", version)
			exe := "kubectl-ks_mc"
			if osName == "windows" {
				exe += ".exe"
			}
			for _, f := range []string{"LICENSE", exe, "kubectl_complete-ks_mc"} {
				if _, err := os.Stat(filepath.Join(store, f)); err != nil {
					t.Errorf("%s not installed: %v", f, err)
				}
			}
		})
	}
}

// TestKrewInstall installs the linux/amd64 archive with krew, runs the plugin through kubectl's
// plugin discovery (also its completion through kubectl's plugin completion), and uninstalls it.
func TestKrewInstall(t *testing.T) {
	root := t.TempDir()
	env := krewEnv(t, root)
	archive := filepath.Join(distDir, archiveName("linux/amd64"))

	// A custom index, as docs/install.md describes: a git repository with plugins/ks-mc.yaml.
	// (krew list/uninstall also need an initialized index; the default one would be cloned from
	// the network.)
	indexRepo := filepath.Join(t.TempDir(), "index")
	if err := os.MkdirAll(filepath.Join(indexRepo, "plugins"), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(renderedKrew)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(indexRepo, "plugins", "ks-mc.yaml"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	gitEnv := append(env, "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"commit", "-q", "-m", "ks-mc"}} {
		if _, stderr, err := runCmd(t, gitEnv, "git", append([]string{"-C", indexRepo}, args...)...); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, stderr)
		}
	}
	if _, stderr, err := runCmd(t, env, krewBin, "index", "add", "ks-mc", indexRepo); err != nil {
		t.Fatalf("krew index add: %v\n%s", err, stderr)
	}
	stdout, stderr, err := runCmd(t, env, krewBin, "info", "ks-mc/ks-mc")
	if err != nil || !strings.Contains(stdout, "VERSION: "+version) {
		t.Errorf("krew info ks-mc/ks-mc: %v\n%s%s", err, stdout, stderr)
	}

	stdout, stderr, err = runCmd(t, env, krewBin, "install", "--manifest="+renderedKrew, "--archive="+archive)
	if err != nil {
		t.Fatalf("krew install: %v\n%s%s", err, stdout, stderr)
	}
	if !strings.Contains(stdout+stderr, "Installed plugin: ks-mc") || !strings.Contains(stdout+stderr, "Caveats:") {
		t.Errorf("krew install output lacks the install line or the caveats:\n%s%s", stdout, stderr)
	}
	stdout, _, err = runCmd(t, env, krewBin, "list")
	if err != nil || !strings.Contains(stdout, "ks-mc") {
		t.Errorf("krew list: %v\n%s", err, stdout)
	}

	stdout, stderr, err = runCmd(t, env, "kubectl", "ks-mc", "version", "-o", "json")
	if err != nil {
		t.Fatalf("kubectl ks-mc version -o json: %v\n%s", err, stderr)
	}
	var info map[string]string
	if err := json.Unmarshal([]byte(stdout), &info); err != nil {
		t.Fatalf("version output is not JSON: %v\n%s", err, stdout)
	}
	if info["version"] != version || info["platform"] != "linux/amd64" || info["image"] != imageRepo+":"+version {
		t.Errorf("version = %v, want version %s, platform linux/amd64, image %s:%s", info, version, imageRepo, version)
	}
	if info["gitCommit"] == "" || info["gitCommit"] == "unknown" || info["buildDate"] == "unknown" {
		t.Errorf("version not stamped with commit and date: %v", info)
	}

	// Plugin completion as kubectl >= 1.26 does it: kubectl runs kubectl_complete-ks_mc from PATH.
	helperDir := t.TempDir()
	if err := os.Symlink(filepath.Join(root, "store", "ks-mc", version, "kubectl_complete-ks_mc"), filepath.Join(helperDir, "kubectl_complete-ks_mc")); err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
current-context: host
clusters:
- {name: c, cluster: {server: "https://127.0.0.1:1"}}
users:
- {name: u, user: {}}
contexts:
- {name: host, context: {cluster: c, user: u}}
- {name: member1, context: {cluster: c, user: u}}
- {name: member2, context: {cluster: c, user: u}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cenv := append(krewEnv(t, root), "KUBECONFIG="+kubeconfig)
	for i, e := range cenv {
		if strings.HasPrefix(e, "PATH=") {
			cenv[i] = "PATH=" + helperDir + string(os.PathListSeparator) + strings.TrimPrefix(e, "PATH=")
		}
	}
	stdout, stderr, err = runCmd(t, cenv, "kubectl", "__complete", "ks-mc", "--context", "mem")
	if err != nil {
		t.Fatalf("kubectl __complete ks-mc --context mem: %v\n%s", err, stderr)
	}
	if got := completionNames(stdout); !reflect.DeepEqual(got, []string{"member1", "member2"}) {
		t.Errorf("kubectl __complete ks-mc --context mem = %v, want [member1 member2]\n%s", got, stdout)
	}
	stdout, _, _ = runCmd(t, cenv, "kubectl", "__complete", "ks-mc", "ver")
	if got := completionNames(stdout); !reflect.DeepEqual(got, []string{"version"}) {
		t.Errorf("kubectl __complete ks-mc ver = %v, want [version]\n%s", got, stdout)
	}

	stdout, stderr, err = runCmd(t, env, krewBin, "uninstall", "ks-mc")
	if err != nil {
		t.Fatalf("krew uninstall: %v\n%s%s", err, stdout, stderr)
	}
	if _, err := os.Lstat(filepath.Join(root, "bin", "kubectl-ks_mc")); !os.IsNotExist(err) {
		t.Errorf("kubectl-ks_mc still linked after uninstall: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "store", "ks-mc")); !os.IsNotExist(err) {
		t.Errorf("store/ks-mc still present after uninstall: %v", err)
	}
	if out, _, err := runCmd(t, env, "kubectl", "ks-mc", "version"); err == nil {
		t.Errorf("kubectl ks-mc still runs after uninstall: %s", out)
	}
}

// completionNames returns the suggestions of __complete output (without descriptions).
func completionNames(out string) []string {
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, ":") || line == "" {
			break
		}
		name, _, _ := strings.Cut(line, "\t")
		names = append(names, name)
	}
	return names
}
