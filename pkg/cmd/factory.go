package cmd

import (
	"context"
	"fmt"
	"sort"

	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Factory hands shared collaborators to the commands (kubectl's cmdutil.Factory idea): the
// streams, the kubeconfig flags, and the one place that builds cluster clients. Every command gets
// its member/target and host clients from here; tests swap Clients and nothing else.
type Factory struct {
	ConfigFlags *genericclioptions.ConfigFlags
	Streams     genericiooptions.IOStreams
	// Clients builds the clients of one selected cluster; nil reads the kubeconfig
	// (kubeconfigClients). Test doubles replace it.
	Clients func(sel Selection) (*installer.Clients, error)
}

// Selection names one cluster of the kubeconfig.
type Selection struct {
	// Target is the cluster of --kubeconfig/--context with every kubeconfig override
	// (--cluster, --user, --token, …): the member of join/unjoin, the host of init-host.
	Target bool
	// Otherwise a context (Context; "" = current) of Kubeconfig ("" = the target's kubeconfig):
	// the host of --host-context/--host-kubeconfig, or another context (status --contexts,
	// diagnose's members). The target's overrides are not carried over.
	Kubeconfig, Context string
}

func (f *Factory) clients(sel Selection) (*installer.Clients, error) {
	if f.Clients != nil {
		return f.Clients(sel)
	}
	return f.kubeconfigClients(sel)
}

// TargetClients are the clients of --kubeconfig/--context.
func (f *Factory) TargetClients() (*installer.Clients, error) {
	return f.clients(Selection{Target: true})
}

// HostClients are the clients of the host that h selects.
func (f *Factory) HostClients(h hostFlags) (*installer.Clients, error) {
	return f.clients(Selection{Kubeconfig: h.Kubeconfig, Context: h.Context})
}

// ContextClients are the clients of another context of the target's kubeconfig.
func (f *Factory) ContextClients(name string) (*installer.Clients, error) {
	return f.clients(Selection{Context: name})
}

// HostOrTarget is the host of h when h selects one, else the target cluster when it is a host
// (clusterRole host), else nil: status shows the fleet of whichever is the host.
func (f *Factory) HostOrTarget(ctx context.Context, h hostFlags) (*installer.Clients, error) {
	if h.given() {
		return f.HostClients(h)
	}
	c, err := f.TargetClients()
	if err != nil {
		return nil, err
	}
	cc, err := installer.GetClusterConfiguration(ctx, c)
	if err != nil || cc.ClusterRole() != kubesphere.RoleHost {
		return nil, nil
	}
	return c, nil
}

// kubeconfigClients builds the clients of sel from the kubeconfig.
func (f *Factory) kubeconfigClients(sel Selection) (*installer.Clients, error) {
	if sel.Target {
		cfg, err := f.ConfigFlags.ToRESTConfig()
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig: %w", err)
		}
		return installer.NewClients(cfg, f.CurrentContext())
	}
	cc := selectContext(f.targetKubeconfig(), sel.Kubeconfig, sel.Context)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load the host's kubeconfig (context %q): %w", sel.Context, err)
	}
	name := sel.Context
	if name == "" {
		if raw, err := cc.RawConfig(); err == nil {
			name = raw.CurrentContext
		}
	}
	return installer.NewClients(cfg, name)
}

// CurrentContext is --context, else the kubeconfig's current context ("" when unknown).
func (f *Factory) CurrentContext() string {
	if f.ConfigFlags.Context != nil && *f.ConfigFlags.Context != "" {
		return *f.ConfigFlags.Context
	}
	raw, err := f.ConfigFlags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return ""
	}
	return raw.CurrentContext
}

// targetKubeconfig is --kubeconfig ("" = $KUBECONFIG or ~/.kube/config).
func (f *Factory) targetKubeconfig() string {
	if f.ConfigFlags.KubeConfig != nil {
		return *f.ConfigFlags.KubeConfig
	}
	return ""
}

// ContextNames lists the contexts of the kubeconfig a host selection reads (for prompts and
// suggestions).
func (f *Factory) ContextNames(h hostFlags) []string {
	raw, err := hostLoadingRules(f.targetKubeconfig(), h.Kubeconfig).Load()
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(raw.Contexts))
	for n := range raw.Contexts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// hostLoadingRules is the one host-selection rule, for the commands and for shell completion:
// --host-kubeconfig, else the target's --kubeconfig, else $KUBECONFIG or ~/.kube/config.
func hostLoadingRules(targetKubeconfig, hostKubeconfig string) *clientcmd.ClientConfigLoadingRules {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	switch {
	case hostKubeconfig != "":
		rules.ExplicitPath = hostKubeconfig
	case targetKubeconfig != "":
		rules.ExplicitPath = targetKubeconfig
	}
	return rules
}

// selectContext is the client config of a context ("" = current) of the kubeconfig that
// hostLoadingRules picks.
func selectContext(targetKubeconfig, hostKubeconfig, context string) clientcmd.ClientConfig {
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(hostLoadingRules(targetKubeconfig, hostKubeconfig),
		&clientcmd.ConfigOverrides{CurrentContext: context})
}

// MemberClients are the clients of the given member contexts (or, with all, of every context of
// the kubeconfig but the host's, hostContext), each once: the member selection of diagnose and
// migrate.
func (f *Factory) MemberClients(h hostFlags, hostContext string, contexts []string, all bool) ([]*installer.Clients, error) {
	names := contexts
	if all {
		names = nil
		for _, n := range f.ContextNames(hostFlags{}) {
			if n != hostContext {
				names = append(names, n)
			}
		}
	}
	var out []*installer.Clients
	seen := map[string]bool{hostContext: h.Kubeconfig == ""}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		c, err := f.ContextClients(n)
		if err != nil {
			return nil, fmt.Errorf("member context %s: %w", n, err)
		}
		out = append(out, c)
	}
	return out, nil
}
