package cmd

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

func init() { registerCommand(NewCmdRender) }

// NewCmdRender groups the renderers ("render agent").
func NewCmdRender(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Render manifests without applying them",
		Args:  cobra.NoArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	cmd.AddCommand(NewCmdRenderAgent(f))
	return cmd
}

// RenderAgentOptions holds the flags of "kubectl ks-mc render agent".
type RenderAgentOptions struct {
	Host         hostFlags
	Name         string
	Tunnel       string
	AgentImage   string
	CACertHash   string
	ProxyAddress string
	Output       string

	Interaction
	genericiooptions.IOStreams

	// factory builds the clients (set by Complete; tests swap Factory.Clients).
	factory *Factory
}

// NewCmdRenderAgent renders the agent of a member from the host's data.
func NewCmdRenderAgent(f *Factory) *cobra.Command {
	o := &RenderAgentOptions{IOStreams: f.Streams, Tunnel: string(kubesphere.TunnelAuto), Output: "yaml"}
	cmd := &cobra.Command{
		Use:   "agent --host-context HOST --name NAME",
		Short: "Render the agent a member runs (secrets redacted)",
		Long: `Render the agent Deployment of an existing Cluster from the host's data (proxy address, agent
image, tunnel), as join applies it. Secrets are redacted: for the ks-mc agent the token lives in Secret
kubesphere-system/cluster-agent-token, which you create from the Cluster's spec.connection.token;
for KubeSphere's Tower agent the token is a command-line argument (that is how Tower works).`,
		Example: "  kubectl ks-mc render agent --host-context host --name member1 > agent.yaml",
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
	fl.StringVar(&o.Name, "name", "", "Name of the member's Cluster on the host (required)")
	fl.StringVar(&o.Tunnel, "tunnel", o.Tunnel, `"tower", "ks-mc" or "auto" (what the host's proxy is)`)
	fl.StringVar(&o.AgentImage, "agent-image", "", "Agent image (default: the host's multicluster.agentImage for tower, this build's image for ks-mc)")
	fl.StringVar(&o.CACertHash, "ca-cert-hash", "", "Pin of the host proxy's CA, sha256:<hex> (ks-mc agent with an https proxy)")
	fl.StringVar(&o.ProxyAddress, "proxy-address", "", "Proxy address agents dial (default: the host's published address)")
	fl.StringVarP(&o.Output, "output", "o", o.Output, "Output format: yaml or json")
	return cmd
}

// Complete resolves the flags.
func (o *RenderAgentOptions) Complete(f *Factory) error {
	if err := validateOutputFormat(o.Output, false); err != nil {
		return err
	}
	if o.Name == "" {
		return usageErrorf("--name is required: the member's Cluster name on the host")
	}
	if err := manifests.ValidateClusterName(o.Name); err != nil {
		return usageErrorf("--name: %v", err)
	}
	if _, err := kubesphere.ParseTunnel(o.Tunnel); err != nil {
		return usageErrorf("--tunnel: %v", err)
	}
	if err := resolveHostContext(f, &o.Host, &o.Interaction, ""); err != nil {
		return err
	}
	o.factory = f
	return nil
}

// Run renders and prints.
func (o *RenderAgentOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	host, err := o.factory.HostClients(o.Host)
	if err != nil {
		return err
	}
	tun, _ := kubesphere.ParseTunnel(o.Tunnel)
	objs, used, err := installer.RenderAgentFor(ctx, host, installer.RenderAgentOptions{
		Name: o.Name, Tunnel: tun, AgentImage: o.AgentImage, CACertHash: o.CACertHash, ProxyAddress: o.ProxyAddress,
	})
	if err != nil {
		return err
	}
	red := manifests.Redact(objs)
	switch used {
	case kubesphere.TunnelKsMc:
		fmt.Fprintf(o.ErrOut, "the token is redacted; create the Secret on the member from the host's Cluster:\n"+
			"  kubectl -n %s create secret generic %s --from-literal=%s=\"$(kubectl%s get cluster %s -o jsonpath='{.spec.connection.token}')\"\n",
			kubesphere.Namespace, kubesphere.AgentTokenSecretName, kubesphere.AgentTokenSecretKey, hostCtxFlag(host), o.Name)
	default:
		fmt.Fprintf(o.ErrOut, "the --token argument is redacted; put the value of: kubectl%s get cluster %s -o jsonpath='{.spec.connection.token}' in its place\n", hostCtxFlag(host), o.Name)
	}
	if o.Output == "json" {
		items := make([]any, 0, len(red))
		for _, r := range red {
			items = append(items, r.Object)
		}
		return printObject(o.Out, "json", map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	}
	b, err := manifests.EncodeYAML(red)
	if err != nil {
		return err
	}
	_, err = o.Out.Write(b)
	return err
}

func hostCtxFlag(c *installer.Clients) string {
	if c == nil || c.Context == "" {
		return ""
	}
	return " --context " + c.Context
}
