package manifests

import (
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// RedactedValue replaces secrets in anything ks-mc prints (the same text as installer.RedactedValue).
const RedactedValue = "<redacted>"

// secretFlags are command-line flags whose value is a secret.
var secretFlags = []string{"--token=", "--jwt-secret=", "--password="}

// secretFields are paths that hold secrets in the objects ks-mc renders or patches.
var secretFields = [][]string{
	{"spec", "connection", "token"},
	{"spec", "connection", "kubeconfig"},
	{"spec", "authentication", "jwtSecret"},
	{"authentication", "jwtSecret"},
}

// Redact returns deep copies of objs with every secret replaced by RedactedValue: Secret data and
// stringData values, secret flags in container commands and args, env values of variables whose
// name says TOKEN/SECRET/PASSWORD, Cluster tokens and kubeconfigs, jwtSecrets. The inputs are not
// modified.
func Redact(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		out = append(out, RedactObject(o))
	}
	return out
}

// RedactObject is Redact for one object.
func RedactObject(o *unstructured.Unstructured) *unstructured.Unstructured {
	if o == nil {
		return nil
	}
	c := o.DeepCopy()
	if c.GetKind() == "Secret" {
		keys := map[string]bool{}
		for _, field := range []string{"data", "stringData"} {
			m, _, _ := unstructured.NestedMap(c.Object, field)
			for k := range m {
				keys[k] = true
			}
		}
		unstructured.RemoveNestedField(c.Object, "data")
		if len(keys) > 0 {
			sd := map[string]any{}
			for k := range keys {
				sd[k] = RedactedValue
			}
			_ = unstructured.SetNestedMap(c.Object, sd, "stringData")
		}
	}
	for _, path := range secretFields {
		if v, ok, _ := unstructured.NestedFieldNoCopy(c.Object, path...); ok && v != nil && v != "" {
			_ = unstructured.SetNestedField(c.Object, RedactedValue, path...)
		}
	}
	for _, path := range [][]string{{"spec", "template", "spec"}, {"spec"}} {
		podSpec, ok, _ := unstructured.NestedMap(c.Object, path...)
		if !ok {
			continue
		}
		changed := false
		for _, kind := range []string{"initContainers", "containers"} {
			cs, ok := podSpec[kind].([]any)
			if !ok {
				continue
			}
			for _, raw := range cs {
				ctr, ok := raw.(map[string]any)
				if !ok {
					continue
				}
				for _, f := range []string{"command", "args"} {
					if list, ok := ctr[f].([]any); ok {
						for i, a := range list {
							if s, ok := a.(string); ok {
								list[i] = RedactArg(s)
								changed = true
							}
						}
					}
				}
				if env, ok := ctr["env"].([]any); ok {
					for _, e := range env {
						em, ok := e.(map[string]any)
						if !ok {
							continue
						}
						name, _ := em["name"].(string)
						if _, hasValue := em["value"]; hasValue && secretName(name) {
							em["value"] = RedactedValue
							changed = true
						}
					}
				}
			}
		}
		if changed {
			_ = unstructured.SetNestedMap(c.Object, podSpec, path...)
		}
	}
	return c
}

// RedactArg redacts the value of a secret flag ("--token=abc" → "--token=<redacted>").
func RedactArg(s string) string {
	for _, f := range secretFlags {
		if strings.HasPrefix(s, f) && len(s) > len(f) {
			return f + RedactedValue
		}
	}
	return s
}

func secretName(name string) bool {
	n := strings.ToUpper(name)
	return strings.Contains(n, "TOKEN") || strings.Contains(n, "SECRET") || strings.Contains(n, "PASSWORD")
}

// Scrub replaces every occurrence of the given secret values in text by RedactedValue (for
// log lines and messages from elsewhere that might quote them). Empty secrets are ignored.
func Scrub(text string, secrets ...string) string {
	for _, s := range secrets {
		if len(s) >= 4 {
			text = strings.ReplaceAll(text, s, RedactedValue)
		}
	}
	return text
}
