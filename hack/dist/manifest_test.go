package main

import (
	"os"
	"strings"
	"testing"
)

// The committed plugins.yaml (rendered by `make krew-manifest`) must agree with the .krew.yaml
// template on everything but URIs and checksums.
func TestPluginsYAMLMatchesKrewTemplate(t *testing.T) {
	if err := checkManifestFile("../../.krew.yaml", "../../plugins.yaml"); err != nil {
		t.Fatal(err)
	}
}

func TestCompareManifestToTemplateFindsDrift(t *testing.T) {
	tmpl, err := os.ReadFile("../../.krew.yaml")
	if err != nil {
		t.Fatal(err)
	}
	good, err := RenderKrewTemplate(string(tmpl), "v1.2.3", func(string) (string, error) { return strings.Repeat("c", 64), nil })
	if err != nil {
		t.Fatal(err)
	}
	if diffs, err := CompareManifestToTemplate(string(tmpl), good); err != nil || len(diffs) != 0 {
		t.Fatalf("a fresh rendering differs: %v %v", diffs, err)
	}
	// Other URIs and checksums are fine; anything else is drift.
	other := strings.ReplaceAll(string(good), "https://github.com/ks-mc/ks-mc/releases/download/", "https://mirror.example/ks-mc/")
	other = strings.ReplaceAll(other, strings.Repeat("c", 64), strings.Repeat("d", 64))
	if diffs, err := CompareManifestToTemplate(string(tmpl), []byte(other)); err != nil || len(diffs) != 0 {
		t.Fatalf("URI/sha256 changes were reported: %v %v", diffs, err)
	}
	for name, mutate := range map[string]func(string) string{
		"shortDescription": func(s string) string {
			return strings.Replace(s, "shortDescription: Set up", "shortDescription: Setup", 1)
		},
		"bin":           func(s string) string { return strings.Replace(s, "bin: kubectl-ks_mc.exe", "bin: kubectl-ks_mc", 1) },
		"arch selector": func(s string) string { return strings.Replace(s, "arch: arm64", "arch: arm", 1) },
		"uppercase sha": func(s string) string { return strings.Replace(s, strings.Repeat("c", 64), strings.Repeat("C", 64), 1) },
		"wrong archive": func(s string) string { return strings.Replace(s, "_linux_arm64.tar.gz", "_linux_amd64.tar.gz", 1) },
		"caveats":       func(s string) string { return strings.Replace(s, "unjoin removes both", "unjoin removes it", 1) },
	} {
		changed := mutate(string(good))
		if changed == string(good) {
			t.Fatalf("%s: mutation did not apply", name)
		}
		diffs, err := CompareManifestToTemplate(string(tmpl), []byte(changed))
		if err != nil || len(diffs) == 0 {
			t.Errorf("%s: drift not reported (%v)", name, err)
		}
	}
}

// Rules krew-index enforces on the template itself.
func TestKrewTemplateRules(t *testing.T) {
	tmpl, err := os.ReadFile("../../.krew.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(tmpl), "\n") {
		if strings.Contains(line, "addURIAndSha") {
			continue // template calls are replaced by short uri/sha256 lines
		}
		if len(line) > 80 {
			t.Errorf(".krew.yaml:%d is %d columns wide (max 80): %s", i+1, len(line), line)
		}
	}
	rendered, err := RenderKrewTemplate(string(tmpl), "v1.2.3", func(string) (string, error) { return strings.Repeat("0", 64), nil })
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"apiVersion: krew.googlecontainertools.github.com/v1alpha2\n", "kind: Plugin\n", "  name: ks-mc\n",
		"  version: v1.2.3\n", "homepage: https://", "caveats: |", "description: |",
	} {
		if !strings.Contains(string(rendered), want) {
			t.Errorf("rendered .krew.yaml lacks %q", want)
		}
	}
	for _, line := range strings.Split(string(rendered), "\n") {
		if v, ok := strings.CutPrefix(line, "  shortDescription: "); ok && len(v) > 50 {
			t.Errorf("shortDescription is %d characters (max 50): %q", len(v), v)
		}
	}
}
