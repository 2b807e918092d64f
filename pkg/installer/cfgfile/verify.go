package cfgfile

import (
	"fmt"
	"reflect"
	"strings"
)

// verify parses the result again: the other documents read the same, and the
// ClusterConfiguration reads as the original with the edits made.
func (f *File) verify(out []byte, edits []Edit) error {
	g, err := Parse(out)
	if err != nil && !strings.Contains(err.Error(), ErrVersion.Error()) {
		return fmt.Errorf("%w: the edited file does not parse again (%v)", ErrUnsupported, err)
	}
	if g == nil {
		return fmt.Errorf("%w: the edited file does not parse again", ErrUnsupported)
	}
	if len(g.docs) != len(f.docs) || g.ccDoc != f.ccDoc {
		return fmt.Errorf("%w: the edit would change the documents of the file", ErrUnsupported)
	}
	for i := range f.docs {
		if i == f.ccDoc {
			continue
		}
		a, err1 := nodeObject(f.docs[i])
		b, err2 := nodeObject(g.docs[i])
		if err1 != nil || err2 != nil || !reflect.DeepEqual(a, b) {
			return fmt.Errorf("%w: the edit would change another document", ErrUnsupported)
		}
	}
	want, err := nodeObject(f.docs[f.ccDoc])
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	for _, e := range edits {
		if err := setPath(want, e.Path, e.Value); err != nil {
			return err
		}
	}
	if !reflect.DeepEqual(normalizeAll(want), normalizeAll(g.obj)) {
		return fmt.Errorf("%w: the edit would change more than the intended values", ErrUnsupported)
	}
	return nil
}

func setPath(obj any, path []string, v any) error {
	m, ok := obj.(map[string]any)
	if !ok {
		return fmt.Errorf("%w: not a mapping", ErrUnsupported)
	}
	for i, k := range path {
		if i == len(path)-1 {
			m[k] = v
			return nil
		}
		next, ok := m[k].(map[string]any)
		if !ok {
			if m[k] != nil {
				return fmt.Errorf("%w: %s is not a mapping", ErrUnsupported, strings.Join(path[:i+1], "."))
			}
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	return nil
}

func normalizeAll(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[k] = normalizeAll(e)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = normalizeAll(e)
		}
		return out
	}
	return normalize(v)
}

// Get returns the ClusterConfiguration's value at path (nil, false when absent).
func (f *File) Get(path ...string) (any, bool) {
	var cur any = f.obj
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// Redacted returns the original file and the edited one with the values at the secret paths
// replaced by RedactedValue (where the file or the edits have a value), for showing them.
func (f *File) Redacted(edits []Edit, secretPaths ...[]string) (before, after []byte, err error) {
	isSecret := func(p []string) bool {
		for _, s := range secretPaths {
			if slicesEqual(s, p) {
				return true
			}
		}
		return false
	}
	var hide []Edit
	for _, p := range secretPaths {
		if v, ok := f.Get(p...); ok && v != nil && v != "" {
			hide = append(hide, Edit{Path: p, Value: RedactedValue})
		}
	}
	before = f.data
	if len(hide) > 0 {
		if before, err = f.Apply(hide); err != nil {
			return nil, nil, err
		}
	}
	var shown []Edit
	for _, e := range edits {
		if isSecret(e.Path) {
			e.Value = RedactedValue
		}
		shown = append(shown, e)
	}
	for _, h := range hide {
		found := false
		for _, e := range shown {
			if slicesEqual(e.Path, h.Path) {
				found = true
			}
		}
		if !found {
			shown = append(shown, h)
		}
	}
	if after, err = f.Apply(shown); err != nil {
		return nil, nil, err
	}
	return before, after, nil
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
