package cmd

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
	"github.com/ks-mc/ks-mc/pkg/tunnel/kube"
	"github.com/ks-mc/ks-mc/pkg/version"
)

func init() { registerCommand(NewCmdProxy) }

// ProxyOptions holds the flags of "kubectl ks-mc proxy".
type ProxyOptions struct {
	BindAddress          string
	Port                 int
	Namespace            string
	CASecret             string
	TLS                  bool
	TLSSANs              []string
	AllowPlaintextAgents bool
	// TowerAgents is "auto" (serve kubesphere/tower v0.2.x agents of Clusters not moved to the
	// ks-mc agent) or "never".
	TowerAgents      string
	KeepAlive        time.Duration
	KeepAliveTimeout time.Duration
	DrainTimeout     time.Duration
	LeaderElect      bool
	LeaseName        string
	// Caps of the proxy port and of the sessions (tunnel.Config, tunnel.ProxyConfig).
	MaxStreamsPerSession int
	MaxStreamsPerCluster int
	StreamWindow         uint32
	MaxHeaderBytes       int
	// MetricsBindAddress serves /metrics on its own listener (off when empty).
	MetricsBindAddress string
	profiles           profileFlags

	restConfig *rest.Config
	genericiooptions.IOStreams
}

// NewProxyOptions returns ProxyOptions with defaults.
func NewProxyOptions(streams genericiooptions.IOStreams) *ProxyOptions {
	d := tunnel.DefaultConfig()
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = kubesphere.Namespace
	}
	return &ProxyOptions{IOStreams: streams, BindAddress: "0.0.0.0", Port: 8080, Namespace: ns,
		CASecret: kubesphere.CASecretName, TLS: true, AllowPlaintextAgents: false, TowerAgents: tunnel.TowerAgentsAuto,
		KeepAlive: d.KeepAliveInterval, KeepAliveTimeout: d.KeepAliveTimeout, DrainTimeout: d.DrainTimeout,
		LeaseName:            "ks-mc-proxy",
		MaxStreamsPerSession: d.MaxStreamsPerSession, MaxStreamsPerCluster: tunnel.DefaultMaxStreamsPerCluster,
		StreamWindow: d.StreamWindowSize, MaxHeaderBytes: tunnel.DefaultMaxHeaderBytes}
}

// NewCmdProxy runs the host side of the bundled tunnel.
func NewCmdProxy(f *Factory) *cobra.Command {
	o := NewProxyOptions(f.Streams)
	cmd := &cobra.Command{
		Use:   "proxy [--bind-address IP] [--port 8080]",
		Short: "Run the tunnel proxy in the host cluster (replaces KubeSphere's Tower)",
		Long: `Run the host side of the ks-mc tunnel, in place of KubeSphere's Tower. The proxy watches
clusters.cluster.kubesphere.io; for every Cluster with joinFederation and connection type proxy it
allocates ports, a token and Service kubesphere-system/mc-<name>, accepts that cluster's agents, and
while one is connected serves the cluster's kube-apiserver (TLS, client certificate of the proxy CA
or the caller's own bearer token) and ks-apiserver listeners, writing the Cluster's kubeconfig and
conditions as Tower does.

The port serves GET /health, /readyz, /version and the agent endpoint; with --tls (default) TLS and
plain HTTP are both answered on it. Metrics (they name every connected cluster) are served only on
--metrics-bind-address, never on the proxy port. The CA lives in Secret <namespace>/ks-mc-proxy-ca; its pin for
agents' --ca-cert-hash is in that Secret's annotation ks-mc.io/ca-cert-hash.`,
		Example: "  kubectl ks-mc proxy --bind-address $(POD_IP) --port 8080",
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
	fl := cmd.Flags()
	fl.StringVar(&o.BindAddress, "bind-address", o.BindAddress, "IP the proxy port and the per-cluster listeners bind to")
	fl.IntVar(&o.Port, "port", o.Port, "The proxy port (health, readiness, version, agents)")
	fl.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "IP:port serving Prometheus /metrics in plain HTTP (off when empty; keep it off networks agents come from)")
	fl.StringVar(&o.Namespace, "proxy-namespace", o.Namespace, "Namespace of the mc-<name> Services, the CA Secret and the Lease (default $POD_NAMESPACE or kubesphere-system)")
	fl.StringVar(&o.CASecret, "ca-secret", o.CASecret, "Secret holding the proxy CA (created when missing)")
	fl.BoolVar(&o.TLS, "tls", o.TLS, "Serve TLS on the proxy port (certificate from the proxy CA); plain HTTP is still answered")
	fl.StringSliceVar(&o.TLSSANs, "tls-san", o.TLSSANs, "Extra DNS names or IPs of the proxy's serving certificate")
	fl.BoolVar(&o.AllowPlaintextAgents, "allow-plaintext-agents", o.AllowPlaintextAgents, "Accept agents that connect over plain http:// (their token travels in clear text); refused by default")
	fl.StringVar(&o.TowerAgents, "tower-agents", o.TowerAgents, "Serve KubeSphere's Tower agents (kubesphere/tower v0.2.x, ws:// or wss://) on the proxy port: auto (for every Cluster without annotation ks-mc.io/agent-protocol=ks-mc) or never")
	fl.DurationVar(&o.KeepAlive, "keepalive", o.KeepAlive, "Interval of keepalive pings to agents")
	fl.DurationVar(&o.KeepAliveTimeout, "keepalive-timeout", o.KeepAliveTimeout, "How long a ping may go unanswered before an agent is dropped")
	fl.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "On SIGTERM, how long open streams may finish")
	fl.IntVar(&o.MaxStreamsPerSession, "max-streams-per-session", o.MaxStreamsPerSession, "Most streams open at once on one agent session (clients get 503 beyond it)")
	fl.IntVar(&o.MaxStreamsPerCluster, "max-streams-per-cluster", o.MaxStreamsPerCluster, "Most streams open at once over all agent sessions of one cluster (clients get 503 beyond it)")
	fl.Uint32Var(&o.StreamWindow, "stream-window", o.StreamWindow, "Per-stream receive window in bytes (256 KiB to 16 MiB): with --max-streams-per-session it bounds the memory slow readers can pin")
	fl.IntVar(&o.MaxHeaderBytes, "max-header-bytes", o.MaxHeaderBytes, "Largest request header accepted on the proxy port (1 KiB to 1 MiB; 431 beyond it)")
	o.profiles.addFlags(fl)
	fl.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "Run as one of several replicas: only the Lease holder serves agents")
	fl.StringVar(&o.LeaseName, "leader-elect-lease", o.LeaseName, "Name of the Lease used with --leader-elect")
	return cmd
}

// Complete loads the host's client configuration (default loading rules, in-cluster fallback).
func (o *ProxyOptions) Complete(f *Factory) error {
	cfg, err := f.ConfigFlags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("load the host's client configuration: %w", err)
	}
	o.restConfig = cfg
	return nil
}

// Validate checks the flags.
func (o *ProxyOptions) Validate() error {
	if net.ParseIP(o.BindAddress) == nil {
		return usageErrorf("--bind-address %q is not an IP address", o.BindAddress)
	}
	if o.Port < 1 || o.Port > 65535 {
		return usageErrorf("--port %d is out of range", o.Port)
	}
	if !o.TLS && !o.AllowPlaintextAgents {
		return usageErrorf("--tls=false needs --allow-plaintext-agents: agents could not connect at all")
	}
	if o.TowerAgents != tunnel.TowerAgentsAuto && o.TowerAgents != tunnel.TowerAgentsNever {
		return usageErrorf("--tower-agents must be %s or %s", tunnel.TowerAgentsAuto, tunnel.TowerAgentsNever)
	}
	if o.MaxStreamsPerSession <= 0 || o.MaxStreamsPerCluster <= 0 {
		return usageErrorf("--max-streams-per-session and --max-streams-per-cluster must be positive")
	}
	if o.StreamWindow < 256<<10 || o.StreamWindow > tunnel.MaxStreamWindowSize {
		return usageErrorf("--stream-window must be between 262144 (256 KiB) and %d (16 MiB) bytes", tunnel.MaxStreamWindowSize)
	}
	if o.MaxHeaderBytes < 1<<10 || o.MaxHeaderBytes > 1<<20 {
		return usageErrorf("--max-header-bytes must be between 1024 and 1048576")
	}
	if o.MetricsBindAddress != "" {
		if _, port, err := net.SplitHostPort(o.MetricsBindAddress); err != nil || port == "" {
			return usageErrorf("--metrics-bind-address must be IP:port, e.g. 127.0.0.1:9090")
		}
	}
	return nil
}

// Run serves until SIGTERM/SIGINT, then drains: listeners stop accepting, agents get GoAway, open
// streams finish within --drain-timeout (pkg/tunnel/kube.RunProxy owns the wiring).
func (o *ProxyOptions) Run(ctx context.Context) error {
	setMemoryLimitFromEnv()
	ctx, stop := interruptible(ctx)
	defer stop()
	stopProfiles, err := o.profiles.start(ctx)
	if err != nil {
		return err
	}
	defer stopProfiles()
	pc := tunnel.DefaultProxyConfig()
	pc.Config.KeepAliveInterval, pc.Config.KeepAliveTimeout, pc.Config.DrainTimeout = o.KeepAlive, o.KeepAliveTimeout, o.DrainTimeout
	pc.Version = version.Version
	pc.AllowPlaintextAgents, pc.TowerAgents = o.AllowPlaintextAgents, o.TowerAgents
	pc.Config.MaxStreamsPerSession, pc.Config.StreamWindowSize = o.MaxStreamsPerSession, o.StreamWindow
	pc.MaxStreamsPerCluster, pc.MaxHeaderBytes = o.MaxStreamsPerCluster, o.MaxHeaderBytes
	return kube.RunProxy(ctx, kube.ProxyOptions{
		RESTConfig: o.restConfig, Namespace: o.Namespace, CASecret: o.CASecret,
		BindAddress: o.BindAddress, Port: o.Port, TLS: o.TLS, TLSSANs: o.TLSSANs, Proxy: pc,
		MetricsBindAddress: o.MetricsBindAddress, LeaderElect: o.LeaderElect, LeaseName: o.LeaseName,
	})
}
