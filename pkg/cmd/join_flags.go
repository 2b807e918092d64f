package cmd

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// hostFlags select the host cluster of join, unjoin, status and render: a context of the same
// kubeconfig (--host-context), or of another one (--host-kubeconfig).
type hostFlags struct {
	Context    string
	Kubeconfig string
}

func (h *hostFlags) add(cmd *cobra.Command, required bool) {
	usage := "Kubeconfig context of the KubeSphere host cluster"
	if !required {
		usage += " (optional)"
	}
	cmd.Flags().StringVar(&h.Context, "host-context", "", usage)
	cmd.Flags().StringVar(&h.Kubeconfig, "host-kubeconfig", "", "Kubeconfig file of the host cluster (default: the same as the member's; its current context unless --host-context)")
}

// given reports whether a host was selected at all.
func (h *hostFlags) given() bool { return h.Context != "" || h.Kubeconfig != "" }

// clients builds the host's clients (Factory.HostClients). Only the kubeconfig and the context
// come from the host flags: the member's --cluster/--user/--token overrides are not carried over.
func (h *hostFlags) clients(f *Factory) (*installer.Clients, error) { return f.HostClients(*h) }

// resolveHostContext makes sure a host is selected: the flags, else a prompt on a terminal, else
// an error naming --host-context.
func resolveHostContext(f *Factory, h *hostFlags, in *Interaction, member string) error {
	if h.given() {
		return nil
	}
	var candidates []string
	for _, n := range f.ContextNames(*h) {
		if n != member {
			candidates = append(candidates, n)
		}
	}
	if !in.Interactive(f.Streams) {
		return &MissingAnswerError{Flag: "--host-context", Example: "HOST_CONTEXT", Reason: "the host cluster is not selected", Suggestions: candidates}
	}
	q := SelectQuestion{Message: "Context of the KubeSphere host cluster:", Other: "enter another context", OtherMessage: "Host context:"}
	for _, c := range candidates {
		q.Options = append(q.Options, Option{Value: c})
	}
	var ans string
	var err error
	if len(q.Options) == 0 {
		ans, err = in.PrompterFor(f.Streams).Input(InputQuestion{Message: "Context of the KubeSphere host cluster:"})
	} else {
		ans, err = in.PrompterFor(f.Streams).Select(q)
	}
	if err != nil {
		return err
	}
	if ans == "" {
		return &MissingAnswerError{Flag: "--host-context", Example: "HOST_CONTEXT", Reason: "no host context was given"}
	}
	h.Context = ans
	return nil
}

// defaultClusterName derives the Cluster name from the member's context: sanitised, or asked for on
// a terminal when nothing usable remains, else an error naming --name.
func defaultClusterName(f *Factory, in *Interaction, memberContext string) (string, error) {
	if n := manifests.SanitizeClusterName(memberContext); n != "" {
		return n, nil
	}
	reason := fmt.Sprintf("no cluster name can be derived from the member's context %q", memberContext)
	if !in.Interactive(f.Streams) {
		return "", &MissingAnswerError{Flag: "--name", Example: "NAME", Reason: reason}
	}
	return in.PrompterFor(f.Streams).Input(InputQuestion{
		Message: "Name of the member cluster on the host (a DNS label, at most 60 characters):", Validate: manifests.ValidateClusterName,
	})
}

// parseLabels turns "k=v" flags into a map.
func parseLabels(kvs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageErrorf("--label %q: use KEY=VALUE", kv)
		}
		out[k] = v
	}
	return out, nil
}

// maxSafeVerbosity is the highest -v at which client-go does not log request and response bodies
// (it does from 8 on: ClusterConfigurations, kubesphere-config and Clusters hold the jwtSecret and
// agent tokens).
const maxSafeVerbosity = 7

// capVerbosity lowers -v to maxSafeVerbosity when it is higher, with a warning, so that no secret
// reaches the logs at any verbosity.
func capVerbosity(errOut io.Writer) {
	if !klog.V(maxSafeVerbosity + 1).Enabled() {
		return
	}
	var l klog.Level
	if err := l.Set(strconv.Itoa(maxSafeVerbosity)); err == nil {
		fmt.Fprintf(errOut, "warning: -v capped at %d: higher levels make client-go log request bodies, which hold secrets here\n", maxSafeVerbosity)
	}
}
