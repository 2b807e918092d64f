package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

func init() { registerCommand(NewCmdJoin) }

// JoinOptions holds the flags of "kubectl ks-mc join".
type JoinOptions struct {
	Host        hostFlags
	Name        string
	Tunnel      string
	Timeout     time.Duration
	DryRunFlag  string
	Output      string
	Labels      []string
	Description string
	Group       string
	Region      string
	Provider    string
	AgentImage  string
	CACertHash  string

	Interaction
	genericiooptions.IOStreams
	joinFile // -f FILE and --force: edit a file before installation (join_file.go)

	// factory builds the clients (set by Complete; tests swap Factory.Clients).
	factory *Factory

	dryRun      installer.DryRun
	tunnel      kubesphere.Tunnel
	labels      map[string]string
	memberCtx   string
	nameFromCtx bool
}

// NewJoinOptions returns JoinOptions with defaults.
func NewJoinOptions(streams genericiooptions.IOStreams) *JoinOptions {
	return &JoinOptions{IOStreams: streams, Timeout: 10 * time.Minute, DryRunFlag: "none", Tunnel: string(kubesphere.TunnelAuto)}
}

const joinExample = `  # Join the cluster of context "member1" to the host of context "host" (same kubeconfig)
  kubectl ks-mc join --context member1 --host-context host

  # The host in another kubeconfig file, a chosen name and metadata
  kubectl ks-mc join --context prod-eu --host-kubeconfig ~/.kube/host.yaml --name prod-eu \
      --provider "Aliyun ACK" --group production --description "EU production" --label env=prod

  # Print what would be applied to both clusters (secrets redacted), for GitOps
  kubectl ks-mc join --context member1 --host-context host --dry-run=client -o yaml`

// NewCmdJoin joins a member cluster to a host through the agent tunnel.
func NewCmdJoin(f *Factory) *cobra.Command {
	o := NewJoinOptions(f.Streams)
	cmd := &cobra.Command{
		Use:   "join --host-context HOST [--name NAME]",
		Short: "Join the current (or --context) cluster to a KubeSphere host through the agent tunnel",
		Long: `Join a KubeSphere 3.x cluster (the current context, or --context) to a host cluster as a member
connected through the agent tunnel ("agent connection").

join checks both clusters first and prints every finding before it changes anything; then it copies
the host's jwtSecret into the member's ClusterConfiguration together with clusterRole: member and
accessTokenMaxAge: 0 (the secret is never printed), waits for the member's ks-installer, creates the
Cluster object on the host, renders and applies the agent on the member (server-side apply), and
waits until the host reports the member Ready. Re-running it on a joined member changes nothing.`,
		Example: joinExample,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Complete(f, c); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(c.Context())
		},
	}
	fl := cmd.Flags()
	o.Host.add(cmd, true)
	fl.StringVar(&o.Name, "name", "", "Name of the member on the host, a DNS label of at most 60 characters (default: the member's context name, sanitised)")
	fl.StringVar(&o.Tunnel, "tunnel", o.Tunnel, `Agent to run: "tower" (KubeSphere's own), "ks-mc" (bundled) or "auto" (what the host's proxy is)`)
	fl.DurationVar(&o.Timeout, "timeout", o.Timeout, "How long to wait in total (member installer, token, rollout, connection)")
	addDryRunFlag(cmd, &o.DryRunFlag)
	fl.StringVarP(&o.Output, "output", "o", "", "Output format: json or yaml (with --dry-run: the objects for both clusters; else the result)")
	fl.StringArrayVar(&o.Labels, "label", nil, "Label KEY=VALUE of the Cluster object (repeatable)")
	fl.StringVar(&o.Description, "description", "", "Description of the member (annotation kubesphere.io/description)")
	fl.StringVar(&o.Group, "group", "", "Group of the member (label cluster.kubesphere.io/group)")
	fl.StringVar(&o.Region, "region", "", "Region of the member (label cluster.kubesphere.io/region)")
	fl.StringVar(&o.Provider, "provider", "", "Provider of the member (spec.provider, e.g. \"Aliyun ACK\")")
	fl.StringVar(&o.AgentImage, "agent-image", "", "Agent image (default: the host's multicluster.agentImage for tower, this build's image for ks-mc)")
	fl.StringVar(&o.CACertHash, "ca-cert-hash", "", "Pin of the host proxy's CA, sha256:<hex> (needed for an https proxy address with --tunnel=ks-mc)")
	o.addFileFlags(cmd)
	_ = cmd.RegisterFlagCompletionFunc("tunnel", cobra.FixedCompletions([]string{string(kubesphere.TunnelAuto), string(kubesphere.TunnelTower), string(kubesphere.TunnelKsMc)}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Complete fills in derived values: dry-run mode, tunnel, member context, default name, host.
func (o *JoinOptions) Complete(f *Factory, c *cobra.Command) error {
	if o.File != "" {
		return o.completeFile(f, c)
	}
	var err error
	if o.dryRun, err = parseDryRunFlag(o.DryRunFlag); err != nil {
		return err
	}
	if o.tunnel, err = kubesphere.ParseTunnel(o.Tunnel); err != nil {
		return usageErrorf("--tunnel: %v", err)
	}
	if o.labels, err = parseLabels(o.Labels); err != nil {
		return err
	}
	if err := validateOutputFormat(o.Output, true); err != nil {
		return err
	}
	o.memberCtx = f.CurrentContext()
	if err := resolveHostContext(f, &o.Host, &o.Interaction, o.memberCtx); err != nil {
		return err
	}
	if o.Name == "" {
		if o.Name, err = defaultClusterName(f, &o.Interaction, o.memberCtx); err != nil {
			return err
		}
		o.nameFromCtx = true
	}
	o.factory = f
	return nil
}

// Validate checks the flags before anything contacts a cluster.
func (o *JoinOptions) Validate() error {
	if err := o.validateFileFlags(); err != nil || o.File != "" {
		return err
	}
	if err := manifests.ValidateClusterName(o.Name); err != nil {
		if o.nameFromCtx {
			return usageErrorf("%v (derived from the context name): pass --name", err)
		}
		return usageErrorf("--name: %v", err)
	}
	if o.Timeout <= 0 {
		return usageErrorf("--timeout must be positive")
	}
	if o.Host.Context != "" && o.Host.Kubeconfig == "" && o.Host.Context == o.memberCtx {
		return usageErrorf("--host-context %q is also the member's context: select the member with --context", o.Host.Context)
	}
	for k, v := range o.labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return usageErrorf("--label %q: invalid key: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return usageErrorf("--label %s=%q: invalid value: %s", k, v, strings.Join(errs, "; "))
		}
	}
	if o.Group != "" {
		if errs := validation.IsValidLabelValue(o.Group); len(errs) > 0 {
			return usageErrorf("--group %q: %s", o.Group, strings.Join(errs, "; "))
		}
	}
	if o.Region != "" {
		if errs := validation.IsValidLabelValue(o.Region); len(errs) > 0 {
			return usageErrorf("--region %q: %s", o.Region, strings.Join(errs, "; "))
		}
	}
	if o.CACertHash != "" && !strings.HasPrefix(o.CACertHash, "sha256:") {
		return usageErrorf("--ca-cert-hash must be sha256:<hex>")
	}
	return nil
}

// Run performs the join.
func (o *JoinOptions) Run(parent context.Context) error {
	if o.File != "" {
		return o.runFile(parent)
	}
	ctx, rep, done := o.startRun(parent, o.IOStreams)
	defer done()

	member, err := o.factory.TargetClients()
	if err != nil {
		return err
	}
	host, err := o.factory.HostClients(o.Host)
	if err != nil {
		return err
	}
	j := installer.NewJoin(host, member, installer.JoinOptions{
		Name: o.Name, Tunnel: o.tunnel, Provider: o.Provider, Description: o.Description, Group: o.Group, Region: o.Region,
		Labels: o.labels, AgentImage: o.AgentImage, CACertHash: o.CACertHash, Timeout: o.Timeout, DryRun: o.dryRun,
		OnPreflight: func(p *installer.Preflight) { printChecks(o.ErrOut, p.Checks) },
	}, rep)
	res, err := j.Run(ctx)
	if err != nil {
		if ctx.Err() != nil && parent.Err() == nil {
			return &ExitError{Code: 130, Err: fmt.Errorf("interrupted: %v\nre-running the same join command continues from the current state", err)}
		}
		var pre *installer.PreflightError
		if errors.As(err, &pre) {
			return err
		}
		return fmt.Errorf("%w\nafter fixing the cause, re-run join: it continues from the current state", err)
	}
	rep.Close()
	return o.print(res)
}

// joinOutput is the -o json|yaml form of a dry run: the objects per cluster and the result.
type joinOutput struct {
	Result *installer.JoinResult `json:"result"`
	Host   clusterObjects        `json:"host"`
	Member clusterObjects        `json:"member"`
}

type clusterObjects struct {
	Context string           `json:"context,omitempty"`
	Objects []map[string]any `json:"objects"`
}

func objectMaps(objs []*unstructured.Unstructured) []map[string]any {
	out := make([]map[string]any, 0, len(objs))
	for _, o := range manifests.Redact(objs) { // redacted again: cheap, and safe if a caller forgot
		out = append(out, o.Object)
	}
	return out
}

func (o *JoinOptions) print(res *installer.JoinResult) error {
	if res.DryRun != "" {
		for _, p := range res.Pending {
			fmt.Fprintln(o.ErrOut, "not known before applying: "+p)
		}
		fmt.Fprintf(o.ErrOut, "dry run (%s): nothing was changed\n", res.DryRun)
		switch o.Output {
		case "json":
			return printObject(o.Out, "json", joinOutput{Result: res,
				Host:   clusterObjects{Context: res.HostContext, Objects: objectMaps(res.HostObjects)},
				Member: clusterObjects{Context: res.Context, Objects: objectMaps(res.MemberObjects)}})
		default:
			return writeObjectsYAML(o.Out, res)
		}
	}
	if o.Output != "" {
		return printObject(o.Out, o.Output, res)
	}
	w := o.Out
	fmt.Fprintf(w, "Cluster %q joined the host %s through the %s tunnel (proxy %s).\n", res.Name, orUnknown(res.HostContext), res.Tunnel, res.ProxyAddress)
	if len(res.Changes) == 0 {
		fmt.Fprintln(w, "  changes:    none (already joined)")
	} else {
		for i, c := range res.Changes {
			label := "  changes:    "
			if i > 0 {
				label = "              "
			}
			fmt.Fprintf(w, "%s%s %s: %s\n", label, c.Action, c.Object, c.Summary)
		}
	}
	if r := installer.FindCondition(res.Conditions, kubesphere.ConditionReady); r != nil {
		fmt.Fprintf(w, "  ready:      %s\n", r.Status)
	}
	fmt.Fprintf(w, "\nSee the fleet with:\n  %s status --host-context %s\n", CommandName, orUnknown(res.HostContext))
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "<host>"
	}
	return s
}

// writeObjectsYAML writes the would-be objects as a YAML stream, each headed by the cluster it
// belongs to, so the host part and the member part can be committed separately.
func writeObjectsYAML(w io.Writer, res *installer.JoinResult) error {
	first := true
	write := func(where string, objs []*unstructured.Unstructured) error {
		for _, obj := range manifests.Redact(objs) {
			if !first {
				fmt.Fprintln(w, "---")
			}
			first = false
			fmt.Fprintf(w, "# %s: %s %s\n", where, obj.GetKind(), objName(obj))
			b, err := yaml.Marshal(obj.Object)
			if err != nil {
				return fmt.Errorf("encode yaml: %w", err)
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
	if err := write("host "+orUnknown(res.HostContext), res.HostObjects); err != nil {
		return err
	}
	return write("member "+orUnknown(res.Context), res.MemberObjects)
}

func objName(o *unstructured.Unstructured) string {
	if o.GetNamespace() != "" {
		return o.GetNamespace() + "/" + o.GetName()
	}
	return o.GetName()
}
