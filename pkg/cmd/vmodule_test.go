package cmd

import (
	"bytes"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"
)

// --vmodule='*=10' must not bypass the -v cap (it turns on client-go's body logging).
func TestVModuleCapped(t *testing.T) {
	var errOut bytes.Buffer
	root := NewCmdRoot(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &bytes.Buffer{}, ErrOut: &errOut})
	root.SetArgs([]string{"version", "--vmodule=*=10"})
	f := root.PersistentFlags().Lookup("vmodule")
	defer func() { _ = f.Value.Set("") }()
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if klog.V(8).Enabled() {
		t.Fatalf("--vmodule=*=10 enables V(8) (value now %q)", f.Value.String())
	}
	if !klog.V(7).Enabled() || !strings.Contains(errOut.String(), "--vmodule levels capped at 7") {
		t.Fatalf("V(7) %v, warning %q", klog.V(7).Enabled(), errOut.String())
	}
}
