package installer

import (
	"context"
	"strings"
	"testing"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Switching a Tower host to --tunnel=ks-mc cuts off its Tower-connected members: preflight lists
// them, says how to re-join each, and refuses without --force.
func TestHostPreflightTowerMembers(t *testing.T) {
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false), memberCluster("m2", "uid-2", false))
	opts := fastOpts()
	opts.Tunnel = kubesphere.TunnelKsMc
	p, st := NewHost(f.host.c, opts, nil, nil).Preflight(context.Background())
	if st == nil {
		t.Fatalf("no state:\n%s", checkLines(p))
	}
	errs := errorsOf(p)
	for _, want := range []string{"member1", "m2", "Tower", "--force",
		"kubectl ks-mc join --context <context of member1> --host-context host --name member1"} {
		if !strings.Contains(errs, want) {
			t.Errorf("preflight errors lack %q:\n%s", want, checkLines(p))
		}
	}
	opts.Force = true
	p, _ = NewHost(f.host.c, opts, nil, nil).Preflight(context.Background())
	if strings.Contains(errorsOf(p), "Tower agents") || !strings.Contains(checkLines(p), "continuing because of --force") {
		t.Errorf("--force must turn the refusal into a warning:\n%s", checkLines(p))
	}
	// Staying on Tower is no switch: nothing to say.
	opts.Force, opts.Tunnel = false, ""
	p, _ = NewHost(f.host.c, opts, nil, nil).Preflight(context.Background())
	if strings.Contains(checkLines(p), "Tower agents") {
		t.Errorf("warned without a switch:\n%s", checkLines(p))
	}
}
