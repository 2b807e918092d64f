package installer

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

func asErr[T error](err error, target *T) bool { return errors.As(err, target) }

func TestPreflightRendering(t *testing.T) {
	var p Preflight
	p.OK("reachable")
	p.Warn("", "version unknown")
	if p.HasErrors() || p.Err() != nil {
		t.Fatal("errors without an error check")
	}
	p.Error("pass --force", "role is %s", "member")
	p.Error("", "second")
	if got := p.Checks[0].String(); got != "[ok] reachable" {
		t.Errorf("ok line %q", got)
	}
	if got := p.Checks[1].String(); got != "[warn] version unknown" {
		t.Errorf("warn line %q", got)
	}
	if got := p.Checks[2].String(); got != "[error] role is member; pass --force" {
		t.Errorf("error line %q", got)
	}
	err := p.Err()
	var pe *PreflightError
	if !errors.As(err, &pe) || len(pe.Failed) != 2 {
		t.Fatalf("Err() = %v", err)
	}
	if !strings.Contains(err.Error(), "nothing was changed") || !strings.Contains(err.Error(), "(pass --force)") {
		t.Errorf("message %q", err)
	}
}

func TestParseDryRun(t *testing.T) {
	for in, want := range map[string]DryRun{"": DryRunNone, "none": DryRunNone, "client": DryRunClient, "server": DryRunServer, "true": DryRunClient} {
		if got, err := ParseDryRun(in); err != nil || got != want {
			t.Errorf("ParseDryRun(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseDryRun("maybe"); err == nil {
		t.Error("no error for maybe")
	}
	if DryRunNone.Enabled() || !DryRunServer.Enabled() || DryRunServer.apiDryRun()[0] != "All" || DryRunClient.apiDryRun() != nil {
		t.Error("Enabled/apiDryRun wrong")
	}
}

func TestCheckAccess(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	wants := HostAccess(HostOptions{Tunnel: kubesphere.TunnelKsMc})
	denied, err := CheckAccess(context.Background(), fc.c, wants)
	if err != nil || len(denied) != 0 {
		t.Fatalf("denied %v, %v", denied, err)
	}
	fc.denied["patch clusterconfigurations"] = true
	var p Preflight
	CheckAccessInto(context.Background(), &p, fc.c, wants)
	if !p.HasErrors() {
		t.Fatal("denied patch not reported")
	}
	line := p.Checks[0].String()
	for _, want := range []string{"[error]", "patch clusterconfigurations.installer.kubesphere.io/ks-installer -n kubesphere-system", "kubectl auth can-i", "--context test-host"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
}
