package cmd

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Shell completion. Cobra provides `kubectl ks-mc completion bash|zsh|fish|powershell` and the
// hidden `__complete` command; kubectl >= 1.26 completes `kubectl ks-mc <TAB>` by running the
// `kubectl_complete-ks_mc` helper from PATH (shipped in the release archives, see
// hack/kubectl_complete-ks_mc), which calls `kubectl ks-mc __complete "$@"`.
//
// The functions below add dynamic suggestions: kubeconfig context names and the KubeSphere
// Cluster objects of the host. Errors never surface: they only mean "no suggestions".

// completionTimeout bounds the API calls made while the user waits on <TAB>.
const completionTimeout = 5 * time.Second

// RegisterContextCompletion makes flagName of cmd complete with the context names of the
// kubeconfig in use: --host-kubeconfig for the host-* flags when that flag is set, otherwise
// --kubeconfig, otherwise $KUBECONFIG or ~/.kube/config. It is a no-op when cmd has no such flag
// or the flag already has a completion function, so it is safe to call more than once.
func RegisterContextCompletion(cmd *cobra.Command, flagName string) {
	registerFlagCompletion(cmd, flagName, func(c *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return completeContexts(c, flagName, toComplete), cobra.ShellCompDirectiveNoFileComp
	})
}

// RegisterClusterNameCompletion makes flagName of cmd complete with the names of the KubeSphere
// clusters (clusters.cluster.kubesphere.io) of the host cluster: the context of --host-context
// (and --host-kubeconfig) when the command has those flags and they are set, otherwise the
// context selected by --context/--kubeconfig or the current context.
func RegisterClusterNameCompletion(cmd *cobra.Command, flagName string) {
	registerFlagCompletion(cmd, flagName, func(c *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return completeClusterNames(c, toComplete), cobra.ShellCompDirectiveNoFileComp
	})
}

func registerFlagCompletion(cmd *cobra.Command, flagName string, fn cobra.CompletionFunc) {
	flag := cmd.Flag(flagName)
	if flag == nil || flag.Value.Type() != "string" {
		return
	}
	if _, ok := cmd.GetFlagCompletionFunc(flagName); ok {
		return
	}
	// The only possible error is "already registered" (checked above) or "no such flag".
	_ = cmd.RegisterFlagCompletionFunc(flagName, fn)
}

// registerCompletions wires the dynamic completions into the whole command tree once every
// command has been added: --context (root, persistent), every --host-context, and every --name
// (cluster names). Commands that registered their own function for one of these flags keep it.
func registerCompletions(root *cobra.Command) {
	RegisterContextCompletion(root, "context")
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		RegisterContextCompletion(c, "host-context")
		RegisterClusterNameCompletion(c, "name")
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// flagValue returns the value of a flag of c (local or inherited) if it was set.
func flagValue(c *cobra.Command, name string) string {
	var f *pflag.Flag
	if f = c.Flags().Lookup(name); f == nil {
		f = c.InheritedFlags().Lookup(name)
	}
	if f == nil || !f.Changed {
		return ""
	}
	return f.Value.String()
}

// loadingRulesFor returns the kubeconfig loading rules that the host-* flags (host) or the
// target flags refer to: the same rule the commands use (hostLoadingRules).
func loadingRulesFor(c *cobra.Command, host bool) *clientcmd.ClientConfigLoadingRules {
	hostKubeconfig := ""
	if host {
		hostKubeconfig = flagValue(c, "host-kubeconfig")
	}
	return hostLoadingRules(flagValue(c, "kubeconfig"), hostKubeconfig)
}

func completeContexts(c *cobra.Command, flagName, toComplete string) []string {
	cfg, err := loadingRulesFor(c, strings.HasPrefix(flagName, "host-")).Load()
	if err != nil {
		return nil
	}
	var out []string
	for name, ctx := range cfg.Contexts {
		if !strings.HasPrefix(name, toComplete) {
			continue
		}
		if ctx != nil && ctx.Cluster != "" && ctx.Cluster != name {
			out = append(out, name+"\t"+"cluster "+ctx.Cluster)
		} else {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func completeClusterNames(c *cobra.Command, toComplete string) []string {
	host := c.Flags().Lookup("host-context") != nil
	// The host selection of the commands (hostFlags → selectContext); without host flags the
	// --context/--kubeconfig cluster.
	h := hostFlags{Context: flagValue(c, "context")}
	if host && (flagValue(c, "host-context") != "" || flagValue(c, "host-kubeconfig") != "") {
		h = hostFlags{Context: flagValue(c, "host-context"), Kubeconfig: flagValue(c, "host-kubeconfig")}
	}
	cfg, err := selectContext(flagValue(c, "kubeconfig"), h.Kubeconfig, h.Context).ClientConfig()
	if err != nil {
		return nil
	}
	cfg.Timeout = completionTimeout
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	list, err := client.Resource(kubesphere.ClusterGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	var out []string
	for _, item := range list.Items {
		if name := item.GetName(); strings.HasPrefix(name, toComplete) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
