package cmd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
	"github.com/ks-mc/ks-mc/pkg/tunnel/kube"
	"github.com/ks-mc/ks-mc/pkg/version"
)

func init() { registerCommand(NewCmdAgent) }

// AgentTokenEnv is the environment variable the agent reads its token from (without --token-file).
const AgentTokenEnv = "KSMC_TOKEN"

// AgentOptions holds the flags of "kubectl ks-mc agent".
type AgentOptions struct {
	Name              string
	ProxyServer       string
	TokenFile         string
	CACertHash        string
	KubeSphereService string
	KeepAlive         time.Duration
	KeepAliveTimeout  time.Duration
	DrainTimeout      time.Duration
	// Stream caps (tunnel.Config): open streams served per session, per-stream receive window.
	MaxStreamsPerSession int
	StreamWindow         uint32
	// MetricsBindAddress serves the Go runtime metrics on /metrics (off when empty).
	MetricsBindAddress string
	profiles           profileFlags
	// rejectedToken catches Tower's --token: a token on a command line is readable by anyone who
	// can list pods.
	rejectedToken string

	restConfig *rest.Config
	genericiooptions.IOStreams
}

// NewAgentOptions returns AgentOptions with defaults.
func NewAgentOptions(streams genericiooptions.IOStreams) *AgentOptions {
	d := tunnel.DefaultConfig()
	return &AgentOptions{IOStreams: streams, KubeSphereService: tunnel.DefaultAgentConfig().KubeSphereService,
		KeepAlive: d.KeepAliveInterval, KeepAliveTimeout: d.KeepAliveTimeout, DrainTimeout: d.DrainTimeout,
		MaxStreamsPerSession: d.MaxStreamsPerSession, StreamWindow: d.StreamWindowSize}
}

// NewCmdAgent runs the member side of the bundled tunnel.
func NewCmdAgent(f *Factory) *cobra.Command {
	o := NewAgentOptions(f.Streams)
	cmd := &cobra.Command{
		Use:   "agent --name NAME --proxy-server URL [--token-file FILE] [--ca-cert-hash sha256:HEX]",
		Short: "Run the tunnel agent in a member cluster (dials out to the host's proxy)",
		Long: `Run the member side of the ks-mc tunnel. The agent dials out to the host's proxy, authenticates
with the Cluster's token and serves the host's requests to this cluster's kube-apiserver and
ks-apiserver, and nothing else. It reconnects forever with backoff; on SIGTERM it drains.

The token is read from --token-file (re-read on every connection attempt) or from the environment
variable KSMC_TOKEN, never from the command line. With an https proxy address, --ca-cert-hash pins
the proxy's CA (sha256 of its SubjectPublicKeyInfo, as kubeadm's discovery hash).

The kube-apiserver is reached with the usual client configuration: --kubeconfig/$KUBECONFIG, or the
pod's service account (its token is re-read when it rotates).`,
		Example: `  KSMC_TOKEN=... kubectl ks-mc agent --name member1 --proxy-server https://203.0.113.10:8080 \
      --ca-cert-hash sha256:0123...`,
		Args: cobra.NoArgs,
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
	fl.StringVar(&o.Name, "name", o.Name, "Name of this cluster's Cluster object on the host")
	fl.StringVar(&o.ProxyServer, "proxy-server", o.ProxyServer, "The proxy's address, http(s)://host:port")
	fl.StringVar(&o.TokenFile, "token-file", o.TokenFile, "File holding the agent token (default: env "+AgentTokenEnv+")")
	fl.StringVar(&o.CACertHash, "ca-cert-hash", o.CACertHash, "Pin of the proxy CA, sha256:<hex of its SubjectPublicKeyInfo>")
	fl.StringVar(&o.KubeSphereService, "kubesphere-service", o.KubeSphereService, "ks-apiserver address (host:port, plain HTTP)")
	fl.DurationVar(&o.KeepAlive, "keepalive", o.KeepAlive, "Interval of keepalive pings")
	fl.DurationVar(&o.KeepAliveTimeout, "keepalive-timeout", o.KeepAliveTimeout, "How long a ping may go unanswered before the connection is dropped")
	fl.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "On SIGTERM, how long open streams may finish")
	fl.IntVar(&o.MaxStreamsPerSession, "max-streams-per-session", o.MaxStreamsPerSession, "Most streams served at once on the proxy session (the surplus is refused, the proxy answers 503)")
	fl.Uint32Var(&o.StreamWindow, "stream-window", o.StreamWindow, "Per-stream receive window in bytes (256 KiB to 16 MiB): with --max-streams-per-session it bounds the memory slow readers can pin")
	fl.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "IP:port serving Prometheus /metrics (Go runtime: heap, goroutines) in plain HTTP (off when empty)")
	o.profiles.addFlags(fl)
	fl.StringVar(&o.rejectedToken, "token", "", "Not accepted: use --token-file or "+AgentTokenEnv)
	_ = fl.MarkHidden("token")
	return cmd
}

// Complete builds the kube-apiserver client config (default loading rules, in-cluster fallback).
func (o *AgentOptions) Complete(f *Factory) error {
	if o.rejectedToken != "" {
		return nil // reported by Validate, before touching any config
	}
	cfg, err := f.ConfigFlags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("load the member's client configuration: %w", err)
	}
	o.restConfig = cfg
	return nil
}

// Validate checks the flags; it never echoes a token.
func (o *AgentOptions) Validate() error {
	switch {
	case o.rejectedToken != "":
		return usageErrorf("--token is not accepted (a token on the command line is visible to anyone who can list pods): put it in a file for --token-file or in env %s", AgentTokenEnv)
	case o.Name == "":
		return usageErrorf("--name is required")
	case o.ProxyServer == "":
		return usageErrorf("--proxy-server is required")
	case o.TokenFile == "" && os.Getenv(AgentTokenEnv) == "":
		return usageErrorf("no agent token: pass --token-file or set %s", AgentTokenEnv)
	}
	if o.CACertHash != "" {
		if _, err := tunnel.ParseCACertHash(o.CACertHash); err != nil {
			return usageErrorf("--ca-cert-hash must be sha256:<64 hex digits>")
		}
	}
	if o.MaxStreamsPerSession <= 0 {
		return usageErrorf("--max-streams-per-session must be positive")
	}
	if o.MetricsBindAddress != "" {
		if _, port, err := net.SplitHostPort(o.MetricsBindAddress); err != nil || port == "" {
			return usageErrorf("--metrics-bind-address must be IP:port, e.g. 127.0.0.1:9090")
		}
	}
	if o.StreamWindow < 256<<10 || o.StreamWindow > tunnel.MaxStreamWindowSize {
		return usageErrorf("--stream-window must be between 262144 (256 KiB) and %d (16 MiB) bytes", tunnel.MaxStreamWindowSize)
	}
	return nil
}

// tokenSource reads the token file on every call (so a rotated Secret is picked up), else the env.
func (o *AgentOptions) tokenSource() func() (string, error) {
	if o.TokenFile != "" {
		path := o.TokenFile
		return func() (string, error) {
			b, err := os.ReadFile(path)
			if err != nil {
				return "", fmt.Errorf("read --token-file: %w", err)
			}
			t := strings.TrimSpace(string(b))
			if t == "" {
				return "", fmt.Errorf("--token-file %s is empty", path)
			}
			return t, nil
		}
	}
	t := strings.TrimSpace(os.Getenv(AgentTokenEnv))
	return func() (string, error) { return t, nil }
}

// Run connects until SIGTERM/SIGINT, then drains.
func (o *AgentOptions) Run(ctx context.Context) error {
	setMemoryLimitFromEnv()
	ctx, stop := interruptible(ctx)
	defer stop()
	stopProfiles, err := o.profiles.start(ctx)
	if err != nil {
		return err
	}
	defer stopProfiles()
	cfg := tunnel.DefaultAgentConfig()
	cfg.Config.KeepAliveInterval, cfg.Config.KeepAliveTimeout, cfg.Config.DrainTimeout = o.KeepAlive, o.KeepAliveTimeout, o.DrainTimeout
	cfg.Config.MaxStreamsPerSession, cfg.Config.StreamWindowSize = o.MaxStreamsPerSession, o.StreamWindow
	cfg.ProxyURL, cfg.ClusterName, cfg.CACertHash = o.ProxyServer, o.Name, o.CACertHash
	cfg.Token = o.tokenSource()
	cfg.KubeSphereService = o.KubeSphereService
	cfg.Version = version.Version
	a, err := kube.NewAgent(cfg, o.restConfig)
	if err != nil {
		if errors.Is(err, tunnel.ErrInvalidConfig) {
			return usageErrorf("%v", err)
		}
		return err
	}
	if strings.HasPrefix(o.ProxyServer, "http://") {
		klog.InfoS("WARNING: the proxy address is http://: the agent token travels in clear text; publish the proxy over https and pass --ca-cert-hash")
	}
	if o.MetricsBindAddress != "" {
		ml, err := net.Listen("tcp", o.MetricsBindAddress)
		if err != nil {
			return fmt.Errorf("listen on the metrics address: %w", err)
		}
		msrv := tunnel.NewMetricsServer(tunnel.RuntimeMetricsHandler())
		go func() { _ = msrv.Serve(ml) }()
		defer msrv.Close()
		klog.InfoS("ks-mc agent metrics", "address", ml.Addr().String())
	}
	klog.InfoS("ks-mc agent starting", "cluster", o.Name, "proxy", o.ProxyServer, "version", version.Version)
	return a.Run(ctx)
}
