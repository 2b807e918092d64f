package cfgfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzApply feeds arbitrary files to the editor. For any file Parse accepts, Apply either
// refuses with an error or returns a file that parses again, holds the edited values, and
// keeps every byte before the first change. Apply(nil) returns the file unchanged. The seed
// corpus is in testdata/fuzz/FuzzApply (plus the golden inputs).
func FuzzApply(f *testing.F) {
	for _, in := range goldenInputs {
		if b, err := os.ReadFile(filepath.Join("testdata", in)); err == nil {
			f.Add(b, false)
			f.Add(b, true)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, member bool) {
		file, err := Parse(data)
		if err != nil {
			return
		}
		same, err := file.Apply(nil)
		if err != nil || string(same) != string(data) {
			t.Fatalf("Apply(nil) changed the file (err %v)", err)
		}
		edits := hostEdits
		if member {
			edits = memberEdits
		}
		out, err := file.Apply(edits)
		if err != nil {
			if strings.Contains(err.Error(), testSecret) {
				t.Fatal("an error holds the secret")
			}
			return
		}
		g, err := Parse(out)
		if err != nil {
			t.Fatalf("the result does not parse: %v", err)
		}
		for _, e := range edits {
			if v, ok := g.Get(e.Path...); !ok || normalize(v) != normalize(e.Value) {
				t.Fatalf("%s is %v after the edit", strings.Join(e.Path, "."), v)
			}
		}
		// Surgical: every line of the original that names none of the edited keys is in the
		// result, in order.
		keys := map[string]bool{}
		for _, e := range edits {
			for _, k := range e.Path {
				keys[k] = true
			}
		}
		outLines := strings.SplitAfter(string(out), "\n")
		j := 0
		for _, l := range strings.SplitAfter(string(data), "\n") {
			named := false
			for k := range keys {
				if strings.Contains(l, k) {
					named = true
				}
			}
			if named {
				continue
			}
			for j < len(outLines) && strings.TrimSuffix(outLines[j], "\n") != strings.TrimSuffix(l, "\n") {
				j++
			}
			if j == len(outLines) {
				t.Fatalf("the line %q of the original is not in the result", l)
			}
			j++
		}
		if _, _, err := file.Redacted(edits, jwtPath); err != nil {
			t.Fatalf("Redacted failed where Apply succeeded: %v", err)
		}
	})
}
