package cfgfile

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode"

	yaml "go.yaml.in/yaml/v3"
	sigsyaml "sigs.k8s.io/yaml"
)

// newStyle is the quoting of a value ks-mc adds: the jwtSecret double-quoted, as in
// KubeSphere's files; the rest plain when that reads back as the same value.
func newStyle(path []string) yaml.Style {
	if len(path) > 0 && path[len(path)-1] == "jwtSecret" {
		return yaml.DoubleQuotedStyle
	}
	return 0
}

func checkKey(k string) error {
	for _, r := range k {
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-') {
			return fmt.Errorf("%w: key %q", ErrUnsupported, k)
		}
	}
	return nil
}

// renderScalar renders v in the given style (the replaced value's), falling back to double
// quotes when a plain scalar would read back as something else. name is for errors.
func renderScalar(v any, style yaml.Style, flow, jsonish bool, name string) (string, error) {
	var text string
	switch t := v.(type) {
	case string:
		switch {
		case style&yaml.DoubleQuotedStyle != 0 || jsonish:
			text = doubleQuote(t)
		case style&yaml.SingleQuotedStyle != 0 && !strings.ContainsAny(t, "\n\r\t"):
			text = "'" + strings.ReplaceAll(t, "'", "''") + "'"
		case plainSafe(t, flow):
			text = t
		default:
			text = doubleQuote(t)
		}
	case int64:
		text = strconv.FormatInt(t, 10)
	case int:
		text = strconv.Itoa(t)
	case bool:
		text = strconv.FormatBool(t)
	default:
		return "", fmt.Errorf("%w: %s: unsupported value type %T", ErrUnsupported, name, v)
	}
	if !readsBack(text, v, flow) {
		return "", fmt.Errorf("%w: %s: the new value cannot be written in this place", ErrUnsupported, name)
	}
	return text, nil
}

func doubleQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func plainSafe(s string, flow bool) bool {
	if s == "" || strings.TrimSpace(s) != s || strings.ContainsAny(s, "\n\r\t") {
		return false
	}
	if strings.ContainsRune("-?:,[]{}#&*!|>'\"%@`", rune(s[0])) {
		return false
	}
	if strings.Contains(s, ": ") || strings.Contains(s, " #") || strings.HasSuffix(s, ":") {
		return false
	}
	if flow && strings.ContainsAny(s, ",[]{}") {
		return false
	}
	return readsBack(s, s, flow)
}

// readsBack reports whether text, as the value of a key, reads back as v with both YAML
// readers involved: yaml.v3 (this package) and sigs.k8s.io/yaml (kubectl, YAML 1.1 booleans).
func readsBack(text string, v any, flow bool) bool {
	doc := "k: " + text + "\n"
	if flow {
		doc = "{k: " + text + "}\n"
	}
	var a map[string]any
	if err := yaml.Unmarshal([]byte(doc), &a); err != nil {
		return false
	}
	var b map[string]any
	if err := sigsyaml.Unmarshal([]byte(doc), &b); err != nil {
		return false
	}
	want := normalize(v)
	return reflect.DeepEqual(normalize(a["k"]), want) && reflect.DeepEqual(normalize(b["k"]), want)
}

func normalize(v any) any {
	switch t := v.(type) {
	case int:
		return float64(t)
	case int64:
		return float64(t)
	case uint64:
		return float64(t)
	case float64:
		return t
	}
	return v
}
