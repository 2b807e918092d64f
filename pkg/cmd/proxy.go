package cmd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
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
// streams finish within --drain-timeout.
func (o *ProxyOptions) Run(ctx context.Context) error {
	ctx, stop := interruptible(ctx)
	defer stop()
	log := klog.Background().WithName("proxy")
	kube, err := kubernetes.NewForConfig(o.restConfig)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(o.restConfig)
	if err != nil {
		return err
	}
	ca, err := tunnel.LoadOrCreateCA(ctx, kube, o.Namespace, o.CASecret, log)
	if err != nil {
		return err
	}
	cc := tunnel.DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA, cc.Namespace, cc.BindAddress = dyn, kube, ca, o.Namespace, o.BindAddress
	ctrl, err := tunnel.NewController(cc)
	if err != nil {
		return err
	}
	pc := tunnel.DefaultProxyConfig()
	pc.Config.KeepAliveInterval, pc.Config.KeepAliveTimeout, pc.Config.DrainTimeout = o.KeepAlive, o.KeepAliveTimeout, o.DrainTimeout
	pc.Authenticator, pc.OnAgentChange, pc.Version = ctrl, ctrl.AgentChanged, version.Version
	pc.AllowPlaintextAgents, pc.TowerAgents = o.AllowPlaintextAgents, o.TowerAgents
	pc.Config.MaxStreamsPerSession, pc.Config.StreamWindowSize = o.MaxStreamsPerSession, o.StreamWindow
	pc.MaxStreamsPerCluster, pc.MaxHeaderBytes = o.MaxStreamsPerCluster, o.MaxHeaderBytes
	if o.TLS {
		dns := []string{"tower", "tower." + o.Namespace, "tower." + o.Namespace + ".svc", "localhost"}
		ips := []net.IP{net.ParseIP("127.0.0.1")}
		if ip := net.ParseIP(o.BindAddress); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
		for _, s := range o.TLSSANs {
			if ip := net.ParseIP(s); ip != nil {
				ips = append(ips, ip)
			} else {
				dns = append(dns, s)
			}
		}
		rc, err := tunnel.NewRenewingCert(ca, "ks-mc-proxy", dns, ips, tunnel.ServingValidity)
		if err != nil {
			return err
		}
		pc.TLS = rc.ServerTLS(nil)
	}
	p, err := tunnel.NewProxy(pc)
	if err != nil {
		return err
	}
	ctrl.SetProxy(p)
	ln, err := net.Listen("tcp", net.JoinHostPort(o.BindAddress, strconv.Itoa(o.Port)))
	if err != nil {
		return fmt.Errorf("listen on the proxy port: %w", err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- p.Serve(ln) }()
	klog.InfoS("ks-mc proxy listening", "address", ln.Addr().String(), "tls", o.TLS, "caCertHash", ca.Hash(), "version", version.Version)
	if o.MetricsBindAddress != "" {
		ml, err := net.Listen("tcp", o.MetricsBindAddress)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("listen on the metrics address: %w", err)
		}
		msrv := metricsServer(p.MetricsHandler())
		go func() { _ = msrv.Serve(ml) }()
		defer msrv.Close()
		klog.InfoS("ks-mc proxy metrics", "address", ml.Addr().String())
	}

	ctrlErr := make(chan error, 1)
	// Agents are answered 503 "starting" until the Cluster cache has synced: a starting proxy must
	// not refuse them as unknown.
	p.SetStarting(true)
	runController := func(ctx context.Context) {
		// Per-cluster heartbeat Leases for "kubectl ks-mc diagnose" (pkg/tunnel/heartbeat.go).
		go (&tunnel.Heartbeat{Kube: kube, Namespace: o.Namespace, Identity: os.Getenv("POD_NAME"), Proxy: p}).Run(ctx)
		go func() {
			for !ctrl.HasSynced() {
				select {
				case <-ctx.Done():
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
			p.SetStarting(false)
		}()
		ctrlErr <- ctrl.Run(ctx, 2)
	}
	leDone := make(chan struct{})
	if o.LeaderElect {
		p.SetStandby(true) // until the Lease is ours (OnStartedLeading)
		go func() {
			defer close(leDone)
			o.leaderElect(ctx, kube, p, runController, ctrlErr)
		}()
	} else {
		close(leDone)
		go runController(ctx)
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
	case runErr = <-ctrlErr:
	}
	klog.InfoS("ks-mc proxy shutting down", "drainTimeout", o.DrainTimeout)
	ctrl.StopAccepting()
	sctx, cancel := context.WithTimeout(context.Background(), o.DrainTimeout)
	defer cancel()
	_ = p.Shutdown(sctx)
	ctrl.Close()
	// Release the Lease before exiting, so a standby takes over at once instead of after the
	// lease duration.
	stop()
	select {
	case <-leDone:
	case <-time.After(5 * time.Second):
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return runErr
	}
	return nil
}

// leaderElect runs the controller and accepts agents only while holding the Lease; losing it
// ends the process (the pod restarts as a standby).
func (o *ProxyOptions) leaderElect(ctx context.Context, kube kubernetes.Interface, p *tunnel.Proxy, run func(context.Context), errc chan<- error) {
	id, _ := os.Hostname()
	if n := os.Getenv("POD_NAME"); n != "" {
		id = n
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.Namespace, o.LeaseName, nil, kube.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: id})
	if err != nil {
		errc <- err
		return
	}
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		ReleaseOnCancel: true, Name: o.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				klog.InfoS("leading: serving agents", "lease", o.Namespace+"/"+o.LeaseName, "identity", id)
				p.SetStandby(false)
				run(ctx)
			},
			OnStoppedLeading: func() {
				p.SetStandby(true)
				if ctx.Err() == nil {
					errc <- errors.New("lost the proxy Lease")
				}
			},
		},
	})
}

// metricsServer serves h at /metrics with the proxy port's bounds (small headers, short timeouts).
func metricsServer(h http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	return &http.Server{Handler: mux, MaxHeaderBytes: tunnel.DefaultMaxHeaderBytes,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second}
}
