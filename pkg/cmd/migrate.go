package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ks-mc/ks-mc/pkg/installer"
)

func init() { registerCommand(NewCmdMigrate) }

const migrateExample = `  # Move one member from KubeSphere's Tower agent to the ks-mc agent
  kubectl ks-mc migrate --host-context host --context member1

  # Every member of the host found in the kubeconfig, one by one
  kubectl ks-mc migrate --host-context host --all-contexts

  # What would change, as YAML (nothing is sent)
  kubectl ks-mc migrate --host-context host --all-contexts --dry-run=client -o yaml`

// MigrateOptions holds the flags of "kubectl ks-mc migrate".
type MigrateOptions struct {
	Host        hostFlags
	Contexts    []string
	AllContexts bool
	Timeout     time.Duration
	DryRunFlag  string
	Output      string
	AgentImage  string
	CACertHash  string

	Interaction
	genericiooptions.IOStreams

	// Probe replaces the per-cluster listener probe (tests).
	Probe func(ctx context.Context, host *installer.Clients, cluster string) error

	// factory builds the clients (set by Complete; tests swap Factory.Clients).
	factory *Factory
	dryRun  installer.DryRun
}

// NewMigrateOptions returns MigrateOptions with defaults.
func NewMigrateOptions(streams genericiooptions.IOStreams) *MigrateOptions {
	return &MigrateOptions{IOStreams: streams, Timeout: 5 * time.Minute, DryRunFlag: "none"}
}

// NewCmdMigrate moves members from KubeSphere's Tower agent to the ks-mc agent.
func NewCmdMigrate(f *Factory) *cobra.Command {
	o := NewMigrateOptions(f.Streams)
	cmd := &cobra.Command{
		Use:   "migrate --host-context HOST (--context MEMBER ... | --all-contexts)",
		Short: "Move members from KubeSphere's Tower agent to the ks-mc agent, one by one, without a failed request",
		Long: `Move members of a host that runs the ks-mc proxy (kubectl ks-mc init-host --tunnel=ks-mc) from
KubeSphere's Tower agent to the ks-mc agent, one member at a time.

For each member: preflight (the member is a Cluster of this host connected by a Tower agent, the host
runs the ks-mc proxy), then the ks-mc agent is rendered NEXT TO the Tower agent (Deployment
kubesphere-system/ks-mc-agent, its token in a Secret, the proxy's CA pinned); the proxy sends new
requests to its session as soon as it is up and lets those in flight on the Tower session finish.
Once the proxy's heartbeat Lease says the ks-mc session answers and a request through the
per-cluster listener was answered, the Cluster is annotated ks-mc.io/agent-protocol: ks-mc (the
proxy never serves a Tower agent for it again) and the Tower agent Deployment is deleted.

A member that fails is left on its working Tower agent (the ks-mc agent added by this run is
removed) and the reason is printed; the other members are still migrated; the exit code is 1.
Re-running migrate reports migrated members as already migrated and changes nothing.

--all-contexts uses every context of the kubeconfig whose cluster is a Cluster of this host (by
kube-system UID, as join matches members); the others are reported as skipped.`,
		Example: migrateExample,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Complete(f); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(c.Context())
		},
	}
	o.Host.add(cmd, true)
	fl := cmd.Flags()
	// A local --context (repeatable) shadows the global one: every value is a member context.
	fl.StringArrayVar(&o.Contexts, "context", nil, "Kubeconfig context of a member to migrate (repeatable)")
	fl.BoolVar(&o.AllContexts, "all-contexts", false, "Migrate every context of the kubeconfig whose cluster is a member of this host")
	fl.DurationVar(&o.Timeout, "timeout", o.Timeout, "How long to wait for each member (rollout, session, removal of the Tower agent)")
	addDryRunFlag(cmd, &o.DryRunFlag)
	fl.StringVarP(&o.Output, "output", "o", "", "Print the result as json or yaml")
	fl.StringVar(&o.AgentImage, "agent-image", "", "ks-mc agent image (default: this build's image)")
	fl.StringVar(&o.CACertHash, "ca-cert-hash", "", "Pin of the host proxy's CA, sha256:<hex> (default: read from the host)")
	_ = cmd.RegisterFlagCompletionFunc("context", func(c *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return completeContexts(c, "context", toComplete), cobra.ShellCompDirectiveNoFileComp
	})
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("dry-run", cobra.FixedCompletions([]string{"none", "client", "server"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Complete resolves the flags and the client builders.
func (o *MigrateOptions) Complete(f *Factory) error {
	var err error
	if o.dryRun, err = parseDryRunFlag(o.DryRunFlag); err != nil {
		return err
	}
	o.factory = f
	return nil
}

// Validate checks the flags before anything contacts a cluster.
func (o *MigrateOptions) Validate() error {
	if err := validateOutputFormat(o.Output, true); err != nil {
		return err
	}
	if !o.Host.given() {
		return &MissingAnswerError{Flag: "--host-context", Example: "HOST_CONTEXT", Reason: "the host cluster is not selected"}
	}
	switch {
	case o.AllContexts && len(o.Contexts) > 0:
		return usageErrorf("--context and --all-contexts are exclusive")
	case !o.AllContexts && len(o.Contexts) == 0:
		return usageErrorf("select the members: --context MEMBER (repeatable) or --all-contexts")
	}
	for _, c := range o.Contexts {
		if c == o.Host.Context && o.Host.Kubeconfig == "" {
			return usageErrorf("--context %q is the host's context: pass the members' contexts", c)
		}
	}
	if o.Timeout <= 0 {
		return usageErrorf("--timeout must be positive")
	}
	if o.CACertHash != "" && !strings.HasPrefix(o.CACertHash, "sha256:") {
		return usageErrorf("--ca-cert-hash must be sha256:<hex>")
	}
	return nil
}

// Run migrates the members and prints a summary per member.
func (o *MigrateOptions) Run(parent context.Context) error {
	ctx, stop := interruptible(parent)
	defer stop()
	rep := newProgressReporter(o.ErrOut, o.StderrIsTerminal(o.IOStreams))
	defer rep.Close()
	host, err := o.factory.HostClients(o.Host)
	if err != nil {
		return err
	}
	members, err := o.factory.MemberClients(o.Host, host.Context, o.Contexts, o.AllContexts)
	if err != nil {
		return err
	}
	if len(members) == 0 {
		return fmt.Errorf("migrate: no member context to migrate (the kubeconfig has no context but the host's)")
	}
	m := installer.NewMigrate(host, members, installer.MigrateOptions{
		DryRun: o.dryRun, Timeout: o.Timeout, AgentImage: o.AgentImage, CACertHash: o.CACertHash,
		SkipUnmatched: o.AllContexts, Probe: o.Probe,
		OnPreflight: func(_ string, p *installer.Preflight) {
			// The checks are printed once per member; OK lines only with a problem around them.
			if p.HasErrors() {
				printChecks(o.ErrOut, p.Checks)
			}
		},
	}, rep)
	res, runErr := m.Run(ctx)
	rep.Close()
	if res != nil && (runErr == nil || errors.As(runErr, new(*installer.MigrateError))) {
		if res.DryRun != "" {
			fmt.Fprintf(o.ErrOut, "dry run (%s): nothing was changed\n", res.DryRun)
		}
		if o.Output != "" {
			if err := printObject(o.Out, o.Output, res); err != nil {
				return err
			}
		} else {
			printMigrate(o.Out, res)
		}
	}
	if runErr != nil {
		if ctx.Err() != nil && parent.Err() == nil {
			return &ExitError{Code: 130, Err: fmt.Errorf("interrupted: %v\nre-running the same migrate command continues from the current state", runErr)}
		}
		var me *installer.MigrateError
		if errors.As(runErr, &me) {
			return &ExitError{Code: 1, Err: fmt.Errorf("%w\nafter fixing the cause, re-run migrate: migrated members are reported as already migrated", runErr)}
		}
		return runErr
	}
	return nil
}

// printMigrate writes the human summary: one block per member.
func printMigrate(w io.Writer, res *installer.MigrateResult) {
	for _, r := range res.Members {
		name := r.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(w, "%s (context %s): %s", name, r.Context, r.Result)
		if r.Protocol != "" {
			fmt.Fprintf(w, ", agent protocol %s", r.Protocol)
		}
		if r.Elapsed != "" {
			fmt.Fprintf(w, " (%s)", r.Elapsed)
		}
		fmt.Fprintln(w)
		if r.Reason != "" {
			fmt.Fprintf(w, "  reason:   %s\n", r.Reason)
		}
		if r.Advice != "" {
			fmt.Fprintf(w, "  fix:      %s\n", r.Advice)
		}
		for _, e := range r.Evidence {
			fmt.Fprintf(w, "  evidence: %s\n", e)
		}
		for i, c := range r.Changes {
			label := "  changes:  "
			if i > 0 {
				label = "            "
			}
			fmt.Fprintf(w, "%s%s %s: %s\n", label, c.Action, c.Object, c.Summary)
		}
		for _, p := range r.Pending {
			fmt.Fprintf(w, "  not known before applying: %s\n", p)
		}
	}
	s := res.Summary
	fmt.Fprintf(w, "\n%d migrated, %d already migrated, %d would migrate, %d failed, %d skipped.\n",
		s.Migrated, s.AlreadyMigrated, s.WouldMigrate, s.Failed, s.Skipped)
	if s.Migrated+s.AlreadyMigrated > 0 {
		fmt.Fprintf(w, "See the fleet with:\n  %s status --host-context %s\n", CommandName, orUnknown(res.HostContext))
	}
}
