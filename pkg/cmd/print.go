package cmd

import (
	"encoding/json"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"
)

// validateOutputFormat accepts "", "json" and "yaml" (allowEmpty controls the human default).
func validateOutputFormat(output string, allowEmpty bool) error {
	switch output {
	case "json", "yaml":
		return nil
	case "":
		if allowEmpty {
			return nil
		}
	}
	return usageErrorf("unsupported output format %q: use -o json or -o yaml", output)
}

// printObject writes v to out as JSON or YAML, the way kubectl -o json|yaml does.
func printObject(out io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "    ")
		enc.SetEscapeHTML(false) // keep "<redacted>" readable
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		return nil
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		_, err = out.Write(b)
		return err
	}
	return fmt.Errorf("unsupported output format %q", format)
}
