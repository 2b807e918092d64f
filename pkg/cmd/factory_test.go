package cmd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/ks-mc/ks-mc/pkg/installer"
)

// useClients swaps the factory's clients, the one test seam of the commands: target is the
// --context cluster, others are matched by context name, any other selection gets host.
func useClients(f *Factory, target, host *installer.Clients, others ...*installer.Clients) *Factory {
	f.Clients = func(sel Selection) (*installer.Clients, error) {
		if sel.Target {
			if target == nil {
				return nil, errors.New("no target cluster in this test")
			}
			return target, nil
		}
		for _, c := range others {
			if c.Context == sel.Context {
				return c, nil
			}
		}
		if host == nil {
			return nil, fmt.Errorf("no context %q in this test", sel.Context)
		}
		return host, nil
	}
	return f
}

// contextsOf are the context names of clients.
func contextsOf(cs []*installer.Clients) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Context)
	}
	return out
}

// TestFactoryHostSelection: commands get clients from the Factory only. Host flags select the
// host; without them the target is the host only when its clusterRole is host (status).
func TestFactoryHostSelection(t *testing.T) {
	ctx := context.Background()
	host, member := fakeKS(t, "host", "host", "uid-h"), fakeKS(t, "member1", "member", "uid-1")
	f, _, _ := testFactory(t, "member1", "host")
	var asked []Selection
	f.Clients = func(sel Selection) (*installer.Clients, error) {
		asked = append(asked, sel)
		if sel.Target {
			return member, nil
		}
		return host, nil
	}
	if c, err := f.HostOrTarget(ctx, hostFlags{}); err != nil || c != nil {
		t.Fatalf("a member target is no host: %v, %v", c, err)
	}
	if c, err := f.HostOrTarget(ctx, hostFlags{Context: "host"}); err != nil || c != host {
		t.Fatalf("--host-context host: %v, %v", c, err)
	}
	f.Clients = func(sel Selection) (*installer.Clients, error) { return host, nil }
	if c, err := f.HostOrTarget(ctx, hostFlags{}); err != nil || c != host {
		t.Fatalf("a host target is the host: %v, %v", c, err)
	}
	want := []Selection{{Target: true}, {Context: "host"}}
	if !slices.Equal(asked, want) {
		t.Fatalf("selections %v, want %v", asked, want)
	}
	// Without a test double the kubeconfig is read: --host-kubeconfig wins over --kubeconfig.
	rules := hostLoadingRules("/member/config", "/host/config")
	if rules.ExplicitPath != "/host/config" || hostLoadingRules("/member/config", "").ExplicitPath != "/member/config" {
		t.Fatalf("host loading rules: %q", rules.ExplicitPath)
	}
}
