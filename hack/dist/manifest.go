package main

import (
	"fmt"
	"os"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// CompareManifestToTemplate checks that a rendered krew manifest (plugins.yaml) is the
// .krew.yaml template rendered for its own spec.version: everything must agree except the
// platforms' uri and sha256, which only need to be well-formed (a lowercase hex sha256, a URI
// naming the same archive file). It returns every difference found.
func CompareManifestToTemplate(templateText string, rendered []byte) ([]string, error) {
	var got map[string]any
	if err := yaml.Unmarshal(rendered, &got); err != nil {
		return nil, fmt.Errorf("parse rendered manifest: %w", err)
	}
	spec, _ := got["spec"].(map[string]any)
	tag, _ := spec["version"].(string)
	if tag == "" {
		return nil, fmt.Errorf("rendered manifest has no spec.version")
	}
	fromTemplate, err := RenderKrewTemplate(templateText, tag, func(string) (string, error) {
		return strings.Repeat("0", 64), nil
	})
	if err != nil {
		return nil, fmt.Errorf("render template for %s: %w", tag, err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(fromTemplate, &want); err != nil {
		return nil, fmt.Errorf("parse rendered template: %w", err)
	}

	var diffs []string
	gotPlatforms := platformsOf(got)
	wantPlatforms := platformsOf(want)
	if len(gotPlatforms) != len(wantPlatforms) {
		diffs = append(diffs, fmt.Sprintf("spec.platforms: %d entries, template has %d", len(gotPlatforms), len(wantPlatforms)))
	}
	for i := 0; i < len(gotPlatforms) && i < len(wantPlatforms); i++ {
		g, w := gotPlatforms[i], wantPlatforms[i]
		uri, _ := g["uri"].(string)
		wantURI, _ := w["uri"].(string)
		if uri == "" || path.Base(uri) != path.Base(wantURI) {
			diffs = append(diffs, fmt.Sprintf("spec.platforms[%d].uri %q does not name the archive %q", i, uri, path.Base(wantURI)))
		}
		if sum, _ := g["sha256"].(string); !sha256RE.MatchString(sum) {
			diffs = append(diffs, fmt.Sprintf("spec.platforms[%d].sha256 %q is not a lowercase hex sha256", i, sum))
		}
		for _, m := range []map[string]any{g, w} {
			delete(m, "uri")
			delete(m, "sha256")
		}
	}
	diffs = append(diffs, diffValues("", want, got)...)
	return diffs, nil
}

func platformsOf(m map[string]any) []map[string]any {
	spec, _ := m["spec"].(map[string]any)
	list, _ := spec["platforms"].([]any)
	var out []map[string]any
	for _, p := range list {
		if pm, ok := p.(map[string]any); ok {
			out = append(out, pm)
		}
	}
	return out
}

// diffValues lists the paths where got differs from want.
func diffValues(at string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %v, template has %v", at, got, want)}
		}
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		var sorted []string
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		var out []string
		for _, k := range sorted {
			out = append(out, diffValues(at+"."+k, w[k], g[k])...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: %v, template has %v", at, got, want)}
		}
		var out []string
		for i := range w {
			out = append(out, diffValues(fmt.Sprintf("%s[%d]", at, i), w[i], g[i])...)
		}
		return out
	}
	if !reflect.DeepEqual(want, got) {
		return []string{fmt.Sprintf("%s: %q, template has %q", at, fmt.Sprint(got), fmt.Sprint(want))}
	}
	return nil
}

// checkManifestFile runs CompareManifestToTemplate on files.
func checkManifestFile(templatePath, renderedPath string) error {
	t, err := os.ReadFile(templatePath)
	if err != nil {
		return err
	}
	r, err := os.ReadFile(renderedPath)
	if err != nil {
		return err
	}
	diffs, err := CompareManifestToTemplate(string(t), r)
	if err != nil {
		return err
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%s does not match %s (run make dist krew-manifest VERSION=vX.Y.Z):\n  %s", renderedPath, templatePath, strings.Join(diffs, "\n  "))
	}
	return nil
}
