package cmd

import (
	"errors"
	"fmt"

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
