package cmd

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

func init() { registerCommand(NewCmdUnjoin) }

// UnjoinOptions holds the flags of "kubectl ks-mc unjoin".
type UnjoinOptions struct {
	Host       hostFlags
	Name       string
	Force      bool
	Timeout    time.Duration
	DryRunFlag string
	Output     string

	Interaction
	genericiooptions.IOStreams

	// factory builds the clients (set by Complete; tests swap Factory.Clients).
	factory *Factory

	dryRun installer.DryRun
}

// NewUnjoinOptions returns UnjoinOptions with defaults.
func NewUnjoinOptions(streams genericiooptions.IOStreams) *UnjoinOptions {
	return &UnjoinOptions{IOStreams: streams, Timeout: 5 * time.Minute, DryRunFlag: "none"}
}

const unjoinExample = `  # Remove member1 from the host (Cluster on the host first, then the agent on the member)
  kubectl ks-mc unjoin --context member1 --host-context host

  # The member is gone for good: remove it from the host only
  kubectl ks-mc unjoin --host-context host --name member1 --force`

// NewCmdUnjoin removes a member from a host.
func NewCmdUnjoin(f *Factory) *cobra.Command {
	o := NewUnjoinOptions(f.Streams)
	cmd := &cobra.Command{
		Use:   "unjoin --host-context HOST [--name NAME]",
		Short: "Remove a member: its Cluster on the host, then its agent",
		Long: `Remove a member cluster (the current context, or --context) from a host.

The Cluster object is deleted on the host first (KubeSphere 3.4's webhook must reach the member for
that), then the agent Deployment (and the ks-mc agent's token Secret) on the member. The member's
ClusterConfiguration keeps clusterRole: member and the host's jwtSecret: KubeSphere does not support
switching roles back. With --force a member that is gone is removed from the host only; what stays
behind is listed.`,
		Example: unjoinExample,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Complete(f); err != nil {
				return err
			}
			return o.Run(c.Context())
		},
	}
	o.Host.add(cmd, true)
	fl := cmd.Flags()
	fl.StringVar(&o.Name, "name", "", "Name of the member on the host (default: found by the member's identity)")
	fl.BoolVar(&o.Force, "force", false, "Remove the Cluster even when the member is unreachable, and its finalizer when KubeSphere cannot finish (past KubeSphere 3.4's Cluster webhook, suspended for that one update and restored)")
	fl.DurationVar(&o.Timeout, "timeout", o.Timeout, "How long to wait for the Cluster's deletion")
	addDryRunFlag(cmd, &o.DryRunFlag)
	fl.StringVarP(&o.Output, "output", "o", "", "Print the result as json or yaml")
	return cmd
}

// Complete resolves the flags.
func (o *UnjoinOptions) Complete(f *Factory) error {
	var err error
	if o.dryRun, err = parseDryRunFlag(o.DryRunFlag); err != nil {
		return err
	}
	if err := validateOutputFormat(o.Output, true); err != nil {
		return err
	}
	if o.Name != "" {
		if err := manifests.ValidateClusterName(o.Name); err != nil {
			return usageErrorf("--name: %v", err)
		}
	}
	if o.Timeout <= 0 {
		return usageErrorf("--timeout must be positive")
	}
	member := f.CurrentContext()
	if err := resolveHostContext(f, &o.Host, &o.Interaction, member); err != nil {
		return err
	}
	if o.Host.Context != "" && o.Host.Kubeconfig == "" && o.Host.Context == member && o.Name == "" {
		return usageErrorf("--host-context %q is also the member's context: select the member with --context, or pass --name", member)
	}
	o.factory = f
	return nil
}

// Run performs the unjoin.
func (o *UnjoinOptions) Run(parent context.Context) error {
	ctx, rep, done := o.startRun(parent, o.IOStreams)
	defer done()
	host, err := o.factory.HostClients(o.Host)
	if err != nil {
		return err
	}
	member, err := o.factory.TargetClients()
	if err != nil {
		if !o.Force {
			return fmt.Errorf("%w\n(the member is gone? re-run with --force and --name)", err)
		}
		member = nil
	}
	res, err := installer.Unjoin(ctx, host, member, installer.UnjoinOptions{
		Name: o.Name, Force: o.Force, Timeout: o.Timeout, DryRun: o.dryRun,
	}, rep)
	if err != nil {
		return err
	}
	rep.Close()
	if o.Output != "" {
		return printObject(o.Out, o.Output, res)
	}
	if res.DryRun != "" {
		fmt.Fprintf(o.ErrOut, "dry run (%s): nothing was changed\n", res.DryRun)
	}
	switch {
	case len(res.Changes) == 0:
		fmt.Fprintf(o.Out, "Nothing to remove: no Cluster and no agent for this member.\n")
	case res.DryRun != "":
		fmt.Fprintf(o.Out, "Member %q would be removed from the host (see the changes above).\n", res.Name)
	default:
		fmt.Fprintf(o.Out, "Member %q removed from the host.\n", res.Name)
	}
	for _, l := range res.LeftBehind {
		fmt.Fprintf(o.Out, "  left behind: %s\n", l)
	}
	return nil
}
