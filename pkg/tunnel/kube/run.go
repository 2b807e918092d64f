package kube

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// ProxyOptions are the inputs of a proxy process on a host ("kubectl ks-mc proxy" maps its flags
// to them).
type ProxyOptions struct {
	// RESTConfig reaches the host's apiserver (used when Kube or Dynamic is nil).
	RESTConfig *rest.Config
	// Kube and Dynamic are the host's clients (built from RESTConfig when nil; fakes in tests).
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	// Namespace holds the mc-<name> Services, the CA Secret and the Leases.
	Namespace string
	// CASecret is the Secret holding the proxy CA (created when missing).
	CASecret string
	// BindAddress is the IP of the proxy port and the per-cluster listeners; Port the proxy port.
	BindAddress string
	Port        int
	// Listener, when set, is the proxy port instead of BindAddress:Port (tests).
	Listener net.Listener
	// TLS serves TLS on the proxy port with a certificate of the proxy CA for the tower Service's
	// names, localhost, 127.0.0.1, BindAddress and TLSSANs (DNS names or IPs).
	TLS     bool
	TLSSANs []string
	// Proxy configures the proxy (session tuning, caps, AllowPlaintextAgents, Version);
	// Authenticator and OnAgentChange are the Controller's.
	Proxy *tunnel.ProxyConfig
	// Controller, when set, adjusts the Controller's configuration (port range, resync; tests).
	Controller func(*ControllerConfig)
	// MetricsBindAddress serves /metrics on its own listener (off when empty).
	MetricsBindAddress string
	// LeaderElect makes this replica a standby until it holds Lease Namespace/LeaseName.
	LeaderElect bool
	LeaseName   string
	// Identity names this replica in the Leases ($POD_NAME, else the host name, when empty).
	Identity string
	// Logger is the base logger (klog.Background() when nil, so --v and --vmodule apply).
	Logger *logr.Logger
}

// RunProxy runs the host side of the tunnel until ctx ends: it loads or creates the proxy CA,
// starts the Controller over the Clusters, serves the proxy port (tunnel.RunProxy), renews the
// heartbeat Leases, and with LeaderElect serves agents only while holding the Lease. On the way
// out the drain order is tunnel.RunProxy's: listeners stop accepting, agents get GoAway, open
// streams finish within the drain timeout, then the Controller stops and the Lease is released.
func RunProxy(ctx context.Context, o ProxyOptions) error {
	base := klog.Background()
	if o.Logger != nil {
		base = *o.Logger
	}
	log := base.WithName("proxy")
	if err := o.clients(); err != nil {
		return err
	}
	ca, err := LoadOrCreateCA(ctx, o.Kube, o.Namespace, o.CASecret, log)
	if err != nil {
		return err
	}
	cc := DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA, cc.Namespace, cc.BindAddress = o.Dynamic, o.Kube, ca, o.Namespace, o.BindAddress
	if o.Controller != nil {
		o.Controller(cc)
	}
	ctrl, err := NewController(cc)
	if err != nil {
		return err
	}
	pc := tunnel.DefaultProxyConfig()
	if o.Proxy != nil {
		c := *o.Proxy
		pc = &c
	}
	pc.Authenticator, pc.OnAgentChange = ctrl, ctrl.AgentChanged
	if pc.Logger == nil {
		pc.Logger = &log
	}
	so := tunnel.ServerOptions{
		Proxy: pc, CA: ca, TLS: o.TLS, Listener: o.Listener,
		Address:        net.JoinHostPort(o.BindAddress, strconv.Itoa(o.Port)),
		MetricsAddress: o.MetricsBindAddress,
		Prepare:        func(p *tunnel.Proxy) { ctrl.SetProxy(p) },
		Run:            func(ctx context.Context, p *tunnel.Proxy, fail func(error)) { o.run(ctx, ctrl, p, fail) },
		StopAccepting:  ctrl.StopAccepting,
		Closed:         ctrl.Close,
		Logger:         &base,
	}
	if o.TLS {
		so.DNSNames, so.IPs = o.servingNames()
	}
	return tunnel.RunProxy(ctx, so)
}

// clients builds the clients RESTConfig names, unless set.
func (o *ProxyOptions) clients() error {
	var err error
	if o.Kube == nil {
		if o.Kube, err = kubernetes.NewForConfig(o.RESTConfig); err != nil {
			return err
		}
	}
	if o.Dynamic == nil {
		if o.Dynamic, err = dynamic.NewForConfig(o.RESTConfig); err != nil {
			return err
		}
	}
	return nil
}

// servingNames are the proxy port certificate's names: the tower Service's, localhost, 127.0.0.1,
// BindAddress (unless unspecified) and TLSSANs.
func (o *ProxyOptions) servingNames() ([]string, []net.IP) {
	t := kubesphere.TowerName
	dns := []string{t, t + "." + o.Namespace, t + "." + o.Namespace + ".svc", "localhost"}
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
	return dns, ips
}

func (o *ProxyOptions) identity() string {
	if o.Identity != "" {
		return o.Identity
	}
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	id, _ := os.Hostname()
	return id
}

// run is the Kubernetes side beside the serving proxy. Agents are answered 503 "starting" until
// the Cluster cache has synced (a starting proxy must not refuse them as unknown); with
// LeaderElect, 503 "standby" until the Lease is ours.
func (o *ProxyOptions) run(ctx context.Context, ctrl *Controller, p *tunnel.Proxy, fail func(error)) {
	p.SetStarting(true)
	runController := func(ctx context.Context) {
		// Per-cluster heartbeat Leases for "kubectl ks-mc diagnose" (heartbeat.go).
		go (&Heartbeat{Kube: o.Kube, Namespace: o.Namespace, Identity: os.Getenv("POD_NAME"), Proxy: p}).Run(ctx)
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
		fail(ctrl.Run(ctx, 2))
	}
	if !o.LeaderElect {
		runController(ctx)
		return
	}
	p.SetStandby(true) // until the Lease is ours (OnStartedLeading)
	o.leaderElect(ctx, p, runController, fail)
}

// leaderElect runs the controller and accepts agents only while holding the Lease; losing it
// ends the process (the pod restarts as a standby).
func (o *ProxyOptions) leaderElect(ctx context.Context, p *tunnel.Proxy, run func(context.Context), fail func(error)) {
	id := o.identity()
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.Namespace, o.LeaseName, nil, o.Kube.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: id})
	if err != nil {
		fail(err)
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
					fail(errors.New("lost the proxy Lease"))
				}
			},
		},
	})
}
