package installer

import (
	"context"
	"strings"
	"testing"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Switching a Tower host to --tunnel=ks-mc keeps its Tower-connected members: the ks-mc proxy
// serves Tower agents. Preflight lists them, says they stay connected (failing only while the
// proxy pod is replaced) and how to migrate them; no --force is needed.
func TestHostPreflightTowerMembers(t *testing.T) {
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false), memberCluster("m2", "uid-2", false))
	opts := fastOpts()
	opts.Tunnel = kubesphere.TunnelKsMc
	p, st := split(NewHost(f.host.c, opts, nil, nil).Preflight(context.Background()))
	if st == nil {
		t.Fatalf("no state:\n%s", checkLines(p))
	}
	if errs := errorsOf(p); strings.Contains(errs, "Tower") || strings.Contains(errs, "--force") {
		t.Errorf("Tower members refused:\n%s", errs)
	}
	lines := checkLines(p)
	for _, want := range []string{"member1", "m2", "stay connected through the ks-mc proxy", "while the proxy pod is replaced",
		"token is in its command line", "kubectl ks-mc migrate --host-context host --all-contexts"} {
		if !strings.Contains(lines, want) {
			t.Errorf("preflight lacks %q:\n%s", want, lines)
		}
	}
	// Staying on Tower is no switch: nothing to say.
	opts.Tunnel = ""
	p, _ = split(NewHost(f.host.c, opts, nil, nil).Preflight(context.Background()))
	if strings.Contains(checkLines(p), "Tower agents") {
		t.Errorf("warned without a switch:\n%s", checkLines(p))
	}
}
