package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
	"github.com/ks-mc/ks-mc/pkg/version"
)

func init() { registerCommand(NewCmdInitHost) }

// InitHostOptions holds the flags of "kubectl ks-mc init-host".
type InitHostOptions struct {
	ProxyPublishAddress string
	Timeout             time.Duration
	LoadBalancerWait    time.Duration
	NoRestart           bool
	Force               bool
	DryRunFlag          string
	Output              string
	Tunnel              string
	ProxyImage          string
	// AllowPlaintextAgents is --allow-plaintext-agents; allowPlaintextSet tells whether it was given
	// (unset keeps what the running proxy does).
	AllowPlaintextAgents bool
	allowPlaintextSet    bool

	Interaction
	genericiooptions.IOStreams
	fileTarget // -f FILE: edit a file before installation (inithost_file.go)

	// factory builds the clients (set by Complete; tests swap Factory.Clients).
	factory *Factory

	dryRun installer.DryRun
	proxy  manifests.ProxyValues
}

// NewInitHostOptions returns InitHostOptions with defaults.
func NewInitHostOptions(streams genericiooptions.IOStreams) *InitHostOptions {
	return &InitHostOptions{IOStreams: streams, Timeout: 15 * time.Minute, LoadBalancerWait: 30 * time.Second, DryRunFlag: "none"}
}

const initHostExample = `  # Make the current context's cluster the host; the proxy address is taken from the tower
  # Service's load balancer, or asked for
  kubectl ks-mc init-host

  # Without a load balancer, in a script: publish a node address and the tower NodePort
  kubectl ks-mc init-host --context host --proxy-publish-address http://203.0.113.10:30881

  # Show the changes without making them
  kubectl ks-mc init-host --context host --dry-run -o yaml

  # Serve members through the bundled ks-mc tunnel instead of KubeSphere's Tower (it serves TLS:
  # publish https://, join pins the proxy's CA)
  kubectl ks-mc init-host --context host --tunnel=ks-mc --proxy-publish-address https://203.0.113.10:30881`

// NewCmdInitHost makes a cluster the KubeSphere multi-cluster host.
func NewCmdInitHost(f *Factory) *cobra.Command {
	return newCmdInitHost(f, NewInitHostOptions(f.Streams))
}

// newCmdInitHost builds the command around given options (tests preset clients and interaction).
func newCmdInitHost(f *Factory, o *InitHostOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "init-host",
		Short: "Make a cluster the KubeSphere multi-cluster host, with the proxy reachable",
		Long: `Make a KubeSphere 3.x cluster the multi-cluster host.

init-host checks the cluster first (all checks are printed before anything changes), sets
multicluster.clusterRole: host in ClusterConfiguration kubesphere-system/ks-installer with a merge
patch, waits for ks-installer, publishes the proxy address (the tower Service's load balancer
address, or --proxy-publish-address, or an answer on a terminal), restarts ks-apiserver and verifies
that the proxy answers. Re-running it on a finished host changes nothing; an interrupted run is
completed by running it again.`,
		Example: initHostExample,
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
	fl.StringVar(&o.ProxyPublishAddress, "proxy-publish-address", "", "Address members' agents dial to reach the proxy, "+installer.ProxyAddressExample+" (default: the tower Service's load balancer address; asked for on a terminal when there is none)")
	fl.DurationVar(&o.Timeout, "timeout", o.Timeout, "How long to wait for ks-installer and rollouts in total")
	fl.DurationVar(&o.LoadBalancerWait, "load-balancer-wait", o.LoadBalancerWait, "How long to wait for a newly created tower Service to get a load balancer address")
	fl.BoolVar(&o.NoRestart, "no-restart", false, "Do not restart ks-apiserver (it keeps the old proxy address until restarted)")
	fl.BoolVar(&o.Force, "force", false, "Make a member cluster the host, patch while ks-installer is running, or switch to --tunnel=ks-mc while members connect through Tower")
	addDryRunFlag(cmd, &o.DryRunFlag)
	fl.StringVarP(&o.Output, "output", "o", "", "Print the result (role, proxy address, changes) as json or yaml on stdout")
	fl.StringVar(&o.Tunnel, "tunnel", "", `Tunnel served by Deployment tower: "tower" (KubeSphere's own; the default on a fresh host) or "ks-mc" (the bundled proxy). Unset keeps what runs.`)
	fl.StringVar(&o.ProxyImage, "proxy-image", "", "Image of the ks-mc proxy with --tunnel=ks-mc (default "+version.Image()+")")
	fl.BoolVar(&o.AllowPlaintextAgents, "allow-plaintext-agents", false, "With --tunnel=ks-mc: let agents reach the proxy over an http:// address (their token travels in clear text). Unset keeps what the running proxy does; without it an http:// address is refused")
	o.addFileFlags(cmd)
	_ = cmd.RegisterFlagCompletionFunc("tunnel", cobra.FixedCompletions([]string{string(kubesphere.TunnelTower), string(kubesphere.TunnelKsMc)}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("dry-run", cobra.FixedCompletions([]string{"none", "client", "server"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// Complete fills in derived values.
func (o *InitHostOptions) Complete(f *Factory, c *cobra.Command) error {
	o.fileTarget.complete(c)
	o.allowPlaintextSet = c.Flags().Changed("allow-plaintext-agents")
	d, err := parseDryRunFlag(o.DryRunFlag)
	if err != nil {
		return err
	}
	o.dryRun = d
	o.proxy = manifests.DefaultProxyValues()
	if o.ProxyImage != "" {
		o.proxy.Image = o.ProxyImage
	}
	o.factory = f
	return nil
}

// Validate checks the flags before anything contacts the cluster.
func (o *InitHostOptions) Validate() error {
	if o.File != "" {
		return o.validateFile()
	}
	if err := validateOutputFormat(o.Output, true); err != nil {
		return err
	}
	switch kubesphere.Tunnel(o.Tunnel) {
	case "", kubesphere.TunnelTower, kubesphere.TunnelKsMc:
	default:
		return usageErrorf("--tunnel must be %q or %q, not %q", kubesphere.TunnelTower, kubesphere.TunnelKsMc, o.Tunnel)
	}
	if o.ProxyImage != "" && kubesphere.Tunnel(o.Tunnel) != kubesphere.TunnelKsMc {
		return usageErrorf("--proxy-image is only used with --tunnel=ks-mc")
	}
	if o.allowPlaintextSet && kubesphere.Tunnel(o.Tunnel) != kubesphere.TunnelKsMc {
		return usageErrorf("--allow-plaintext-agents is only used with --tunnel=ks-mc")
	}
	if o.Timeout <= 0 {
		return usageErrorf("--timeout must be positive")
	}
	if o.LoadBalancerWait < 0 {
		return usageErrorf("--load-balancer-wait must not be negative")
	}
	if err := o.validateAddress(); err != nil {
		return err
	}
	if kubesphere.Tunnel(o.Tunnel) == kubesphere.TunnelKsMc {
		if err := o.proxy.Validate(); err != nil {
			return usageErrorf("--proxy-image: %v", err)
		}
	}
	return nil
}

// validateAddress is the one check of --proxy-publish-address (init-host and init-host -f): it
// keeps the value normalised.
func (o *InitHostOptions) validateAddress() error {
	if o.ProxyPublishAddress == "" {
		return nil
	}
	addr, err := installer.ValidateProxyAddress(o.ProxyPublishAddress)
	if err != nil {
		return usageErrorf("--proxy-publish-address: %v", err)
	}
	o.ProxyPublishAddress = addr
	return nil
}

// Run performs init-host.
func (o *InitHostOptions) Run(parent context.Context) error {
	if o.File != "" {
		return o.runFile(parent)
	}
	ctx, rep, done := o.startRun(parent, o.IOStreams)
	defer done()

	clients, err := o.factory.TargetClients()
	if err != nil {
		return err
	}
	host := installer.NewHost(clients, installer.HostOptions{
		ProxyPublishAddress:  o.ProxyPublishAddress,
		Timeout:              o.Timeout,
		NoRestart:            o.NoRestart,
		Force:                o.Force,
		DryRun:               o.dryRun,
		Tunnel:               kubesphere.Tunnel(o.Tunnel),
		Proxy:                o.proxy,
		AllowPlaintextAgents: o.allowPlaintext(),
		LoadBalancerWait:     max(o.LoadBalancerWait, time.Millisecond),
	}, rep, o.askAddress(rep))

	plan := host.Preflight(ctx)
	printChecks(o.ErrOut, plan.Checks)
	if err := plan.Err(); err != nil {
		return err
	}
	res, err := host.Apply(ctx, plan)
	if err != nil {
		return o.explain(ctx, parent, err)
	}
	rep.Close()
	return o.print(res)
}

// printChecks writes preflight lines to stderr.
func printChecks(w io.Writer, checks []installer.Check) {
	for _, c := range checks {
		fmt.Fprintln(w, c.String())
	}
}

// allowPlaintext is --allow-plaintext-agents for the installer: nil when not given.
func (o *InitHostOptions) allowPlaintext() *bool {
	if !o.allowPlaintextSet {
		return nil
	}
	v := o.AllowPlaintextAgents
	return &v
}

// askAddress returns the AddressFunc: a prompt on a terminal, else an error naming the flag.
func (o *InitHostOptions) askAddress(rep *progressReporter) installer.AddressFunc {
	// The ks-mc proxy serves TLS and refuses plaintext agents: suggest https there.
	example := installer.ProxyAddressExample
	if kubesphere.Tunnel(o.Tunnel) == kubesphere.TunnelKsMc && !o.AllowPlaintextAgents {
		example = "https://HOST:PORT"
	}
	return func(_ context.Context, req installer.AddressRequest) (string, error) {
		if !o.Interactive(o.IOStreams) {
			var sugg []string
			for _, c := range req.Candidates {
				sugg = append(sugg, fmt.Sprintf("%s  (%s)", c.Address, c.Source))
			}
			return "", &MissingAnswerError{Flag: "--proxy-publish-address", Example: example, Reason: req.Reason, Suggestions: sugg}
		}
		rep.Pause()
		defer rep.Resume()
		fmt.Fprintln(o.ErrOut, req.Reason+".")
		validate := func(s string) error { _, err := installer.ValidateProxyAddress(s); return err }
		p := o.PrompterFor(o.IOStreams)
		msg := "Address that members' agents use to reach the proxy"
		if req.NodePort != 0 {
			msg += fmt.Sprintf(" (tower NodePort %d)", req.NodePort)
		}
		help := "Agents in member clusters dial this address; it must forward to the tower Service (usually a node address with the NodePort). Format: " + example
		if len(req.Candidates) == 0 {
			return p.Input(InputQuestion{Message: msg + ":", Help: help, Validate: validate})
		}
		q := SelectQuestion{Message: msg + ":", Help: help, Other: "enter another address", OtherMessage: "Proxy address (" + example + "):", Validate: validate}
		for _, c := range req.Candidates {
			q.Options = append(q.Options, Option{Value: c.Address, Description: c.Source})
		}
		return p.Select(q)
	}
}

// explain turns known failures into advice.
func (o *InitHostOptions) explain(ctx, parent context.Context, err error) error {
	if ctx.Err() != nil && parent.Err() == nil || errors.Is(err, ErrPromptAborted) {
		return &ExitError{Code: 130, Err: errors.New("interrupted; the cluster is left in a state that re-running the same init-host command completes")}
	}
	var timeout *installer.InstallerTimeoutError
	var failed *installer.InstallerFailedError
	var rollout *installer.RolloutTimeoutError
	switch {
	case errors.As(err, &timeout), errors.As(err, &failed), errors.As(err, &rollout):
		return fmt.Errorf("%w\nafter fixing the cause, re-run init-host: it continues from the current state", err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w\nyour user lacks a permission init-host needs: ask a cluster administrator (see: kubectl auth can-i --list -n %s)", err, kubesphere.Namespace)
	case apierrors.IsConflict(err):
		return fmt.Errorf("%w\nsomeone else changed the object at the same time: re-run init-host", err)
	}
	return err
}

// print writes the result: -o json|yaml, the changes as YAML for a dry run, else a summary.
func (o *InitHostOptions) print(res *installer.HostResult) error {
	if o.Output != "" {
		return printObject(o.Out, o.Output, res)
	}
	if res.DryRun != "" {
		return o.printDryRun(res)
	}
	return o.printSummary(res)
}

func (o *InitHostOptions) printDryRun(res *installer.HostResult) error {
	fmt.Fprintf(o.ErrOut, "dry run (%s): nothing was changed\n", res.DryRun)
	for _, p := range res.Pending {
		fmt.Fprintln(o.ErrOut, "not known before applying: "+p)
	}
	if len(res.Changes) == 0 {
		fmt.Fprintln(o.ErrOut, "no changes: the cluster is a host already")
		return nil
	}
	for i, c := range res.Changes {
		if i > 0 {
			fmt.Fprintln(o.Out, "---")
		}
		fmt.Fprintf(o.Out, "# %s: %s (%s)\n", c.Object, c.Action, c.Summary)
		var body any = c.Patch
		if c.Manifest != nil {
			body = c.Manifest
		}
		if body == nil {
			continue
		}
		b, err := yaml.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		if _, err := o.Out.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func (o *InitHostOptions) printSummary(res *installer.HostResult) error {
	w := o.Out
	name := res.Context
	if name == "" {
		name = "<this context>"
	}
	ver := ""
	if res.KubeSphereVersion != "" {
		ver = " (KubeSphere " + res.KubeSphereVersion + ")"
	}
	fmt.Fprintf(w, "Cluster %q is a KubeSphere multi-cluster host%s.\n", name, ver)
	src := map[string]string{
		installer.AddressFromFlag:         "from --proxy-publish-address",
		installer.AddressFromAnswer:       "as answered",
		installer.AddressFromExisting:     "already published",
		installer.AddressFromLoadBalancer: "load balancer of Service tower",
	}[res.AddressSource]
	fmt.Fprintf(w, "  proxy address: %s (%s)\n", res.ProxyPublishAddress, src)
	fmt.Fprintf(w, "  tunnel:        %s\n", res.Tunnel)
	if len(res.Changes) == 0 {
		fmt.Fprintln(w, "  changes:       none (already set up)")
	} else {
		var parts []string
		for _, c := range res.Changes {
			parts = append(parts, c.Summary+" ("+c.Object+")")
		}
		fmt.Fprintf(w, "  changes:       %s\n", strings.Join(parts, "\n                 "))
	}
	for _, c := range res.Verify {
		if c.Severity != installer.SeverityOK {
			fmt.Fprintf(w, "  %s\n", c.String())
		}
	}
	fmt.Fprintf(w, "\nJoin a member cluster with:\n  %s join --context <member> --host-context %s\n", CommandName, name)
	return nil
}
