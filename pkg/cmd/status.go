package cmd

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"text/tabwriter"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ks-mc/ks-mc/pkg/installer"
)

func init() { registerCommand(NewCmdStatus) }

// StatusOptions holds the flags of "kubectl ks-mc status".
type StatusOptions struct {
	Host     hostFlags
	Output   string
	Contexts []string
	// Probe adds the live tunnel probe (LIVE column); ProbeTimeout bounds each of its reads.
	Probe        bool
	ProbeTimeout time.Duration

	genericiooptions.IOStreams

	// factory builds the clients (set by Complete; tests swap Factory.Clients).
	factory *Factory
	// Now is the clock for ages (tests).
	Now func() time.Time
}

// NewStatusOptions returns StatusOptions with defaults.
func NewStatusOptions(streams genericiooptions.IOStreams) *StatusOptions {
	return &StatusOptions{IOStreams: streams, Now: time.Now, Probe: true, ProbeTimeout: 3 * time.Second}
}

// NewCmdStatus shows the host's clusters and the roles of the given contexts.
func NewCmdStatus(f *Factory) *cobra.Command {
	o := NewStatusOptions(f.Streams)
	cmd := &cobra.Command{
		Use:   "status [--host-context HOST]",
		Short: "Show the host's member clusters and the roles of the given contexts",
		Long: `Show one row per Cluster of the host (name, connection, agent, ready, versions, nodes, last
transition), the agent PROTOCOL of each member (tower or ks-mc, from the ks-mc proxy's heartbeat
Lease; members still on a Tower agent are flagged as weaker, with the migrate command), a LIVE column from a live probe of each tunnel (the ks-mc proxy's heartbeat, the agent
pods of the given member contexts, the host apiserver's service proxy: a dead member is "down" even
when its conditions still say Connected/True; see "kubectl ks-mc diagnose" for the details), and the
KubeSphere role of the given contexts (the current or --context one, the host, and
--contexts). Without --host-context the current context is used as the host when it is one.`,
		Example: "  kubectl ks-mc status --host-context host\n  kubectl ks-mc status --context member1 --host-context host -o yaml",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := validateOutputFormat(o.Output, true); err != nil {
				return err
			}
			o.complete(f)
			return o.Run(c.Context())
		},
	}
	o.Host.add(cmd, false)
	cmd.Flags().StringVarP(&o.Output, "output", "o", "", "Output format: json or yaml")
	cmd.Flags().StringSliceVar(&o.Contexts, "contexts", nil, "More kubeconfig contexts whose role to show (comma-separated)")
	cmd.Flags().BoolVar(&o.Probe, "probe", o.Probe, "Probe every tunnel live (LIVE column); --probe=false shows the Cluster conditions only")
	return cmd
}

func (o *StatusOptions) complete(f *Factory) { o.factory = f }

// contextClients are the clients of the current context and of --contexts (each once).
func (o *StatusOptions) contextClients() ([]*installer.Clients, error) {
	var out []*installer.Clients
	seen := map[string]bool{}
	if c, err := o.factory.TargetClients(); err == nil {
		out = append(out, c)
		seen[o.factory.CurrentContext()] = true
	}
	for _, name := range o.Contexts {
		if seen[name] {
			continue
		}
		seen[name] = true
		c, err := o.factory.ContextClients(name)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Run prints the status.
func (o *StatusOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	host, err := o.factory.HostOrTarget(ctx, o.Host)
	if err != nil {
		return err
	}
	contexts, err := o.contextClients()
	if err != nil {
		return err
	}
	if host != nil {
		dup := false
		for _, c := range contexts {
			dup = dup || c.Context == host.Context
		}
		if !dup {
			contexts = append([]*installer.Clients{host}, contexts...)
		}
	}
	rep, err := installer.Status(ctx, host, contexts)
	if err != nil {
		return fmt.Errorf("host%s: %w", ctxSuffix(host), err)
	}
	if host != nil && o.Probe {
		if err := installer.ProbeTunnels(ctx, host, contexts, rep, o.ProbeTimeout); err != nil {
			fmt.Fprintf(o.ErrOut, "warning: live probe: %v\n", err)
		}
	}
	if o.Output != "" {
		return printObject(o.Out, o.Output, rep)
	}
	w := tabwriter.NewWriter(o.Out, 0, 8, 2, ' ', 0)
	if host == nil {
		fmt.Fprintln(o.ErrOut, "no host selected (and the current context is not a host): pass --host-context to list member clusters")
	} else {
		live := ""
		if o.Probe {
			live = "LIVE\t"
		}
		fmt.Fprintln(w, "NAME\tROLE\tCONNECTION\tAGENT\tREADY\t"+live+"KUBERNETES\tKUBESPHERE\tNODES\tLAST TRANSITION\tPROTOCOL")
		for _, r := range rep.Clusters {
			col := ""
			if o.Probe {
				col = liveColumn(r) + "\t"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s%s\t%s\t%s\t%s\t%s\n", r.Name, r.Role, dash(r.Connection), r.Agent, r.Ready, col,
				dash(r.KubernetesVersion), dash(r.KubeSphereVersion), strconv.FormatInt(r.Nodes, 10), o.age(r.LastTransition), dash(r.Protocol))
		}
		_ = w.Flush()
		for _, r := range rep.Clusters {
			if r.Message != "" {
				fmt.Fprintf(o.Out, "%s: %s\n", r.Name, r.Message)
			}
			if r.Live == installer.LiveDown && len(r.LiveEvidence) > 0 {
				fmt.Fprintf(o.Out, "%s: %s\n", r.Name, r.LiveEvidence[0])
			}
			if r.Weaker != "" {
				fmt.Fprintf(o.Out, "%s: warning: %s\n", r.Name, r.Weaker)
			}
		}
		fmt.Fprintln(o.Out)
	}
	fmt.Fprintln(w, "CONTEXT\tROLE\tKUBESPHERE\tCLUSTER ON HOST")
	for _, c := range rep.Contexts {
		role := c.Role
		if c.Error != "" {
			role = "error: " + c.Error
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", dash(c.Context), dash(role), dash(c.KubeSphereVersion), dash(c.Cluster))
	}
	return w.Flush()
}

func ctxSuffix(c *installer.Clients) string {
	if c == nil || c.Context == "" {
		return ""
	}
	return " (" + c.Context + ")"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (o *StatusOptions) age(ts string) string {
	if ts == "" {
		return "-"
	}
	t, err := time.Parse(time.RFC3339, ts)
	if err != nil {
		return ts
	}
	return duration.HumanDuration(o.Now().Sub(t)) + " ago"
}

// liveColumn renders the probe: "live (1.2ms)", "down", "unknown", or "-" (not probed).
func liveColumn(r installer.ClusterRow) string {
	switch {
	case r.Live == "":
		return "-"
	case r.Live == installer.LiveUp && r.LatencyMS != nil:
		return fmt.Sprintf("live (%.1fms)", *r.LatencyMS)
	}
	return r.Live
}
