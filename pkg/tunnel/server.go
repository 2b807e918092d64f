package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
)

// ServerOptions are the runtime of a proxy process, wire side: the proxy, its port and serving
// certificate, the metrics listener and the drain order. pkg/tunnel/kube.RunProxy adds the
// Kubernetes side (the CA Secret, the Controller, the heartbeat, standby and leader election)
// through Prepare and Run.
type ServerOptions struct {
	// Proxy configures the proxy (DefaultProxyConfig when nil).
	Proxy *ProxyConfig
	// CA issues the proxy port's serving certificate (with TLS) and is named in the log by its pin.
	CA *CA
	// TLS serves a renewing certificate of CA for DNSNames and IPs on the proxy port (plain HTTP
	// is still answered), unless Proxy.TLS is set already.
	TLS      bool
	DNSNames []string
	IPs      []net.IP
	// Listener is the proxy port; when nil RunProxy listens on Address (host:port).
	Listener net.Listener
	Address  string
	// MetricsAddress serves /metrics on its own listener, plain HTTP (off when empty).
	MetricsAddress string
	// Prepare is called with the proxy before it serves (the Controller learns its proxy).
	Prepare func(p *Proxy)
	// Run runs beside the serving proxy until its ctx ends, then cleans up and returns (a leader
	// election releases its Lease). fail(err) shuts the proxy down and makes RunProxy return err
	// (nil: no error).
	Run func(ctx context.Context, p *Proxy, fail func(error))
	// StopAccepting is called first when the proxy shuts down (the per-cluster listeners stop
	// accepting); Closed after the open streams were drained.
	StopAccepting, Closed func()
	// Logger receives the process-level lines (listening, shutting down); discarded when nil.
	Logger *logr.Logger
}

// runStopTimeout bounds the wait for ServerOptions.Run to return after the drain (the Lease
// release, so that a standby takes over at once instead of after the lease duration).
const runStopTimeout = 5 * time.Second

// RunProxy serves the proxy until ctx ends, Serve fails or Run calls fail, then drains: the
// listeners stop accepting (StopAccepting), agents get GoAway, open streams finish within
// Proxy.Config.DrainTimeout, Closed runs, Run's ctx ends and RunProxy waits a moment for Run.
func RunProxy(ctx context.Context, o ServerOptions) error {
	log := logr.Discard()
	if o.Logger != nil {
		log = *o.Logger
	}
	p, err := newServerProxy(o)
	if err != nil {
		return err
	}
	if o.Prepare != nil {
		o.Prepare(p)
	}
	ln := o.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", o.Address); err != nil {
			return fmt.Errorf("listen on the proxy port: %w", err)
		}
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- p.Serve(ln) }()
	kv := []any{"address", ln.Addr().String(), "tls", o.TLS}
	if o.CA != nil {
		kv = append(kv, "caCertHash", o.CA.Hash())
	}
	log.Info("ks-mc proxy listening", append(kv, "version", p.cfg.Version)...)
	if o.MetricsAddress != "" {
		ml, err := net.Listen("tcp", o.MetricsAddress)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("listen on the metrics address: %w", err)
		}
		msrv := NewMetricsServer(p.MetricsHandler())
		go func() { _ = msrv.Serve(ml) }()
		defer msrv.Close()
		log.Info("ks-mc proxy metrics", "address", ml.Addr().String())
	}

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	failed := make(chan error, 1)
	runDone := make(chan struct{})
	if o.Run != nil {
		fail := func(err error) {
			select {
			case failed <- err:
			default:
			}
		}
		go func() { defer close(runDone); o.Run(runCtx, p, fail) }()
	} else {
		close(runDone)
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
	case runErr = <-failed:
	}
	log.Info("ks-mc proxy shutting down", "drainTimeout", p.cfg.Config.DrainTimeout)
	if o.StopAccepting != nil {
		o.StopAccepting()
	}
	sctx, cancel := context.WithTimeout(context.Background(), p.cfg.Config.DrainTimeout)
	defer cancel()
	_ = p.Shutdown(sctx)
	if o.Closed != nil {
		o.Closed()
	}
	stopRun()
	select {
	case <-runDone:
	case <-time.After(runStopTimeout):
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return runErr
	}
	return nil
}

// newServerProxy builds the proxy of o, with the serving certificate when o.TLS.
func newServerProxy(o ServerOptions) (*Proxy, error) {
	pc := o.Proxy
	if pc == nil {
		pc = DefaultProxyConfig()
	}
	if o.TLS && pc.TLS == nil {
		if o.CA == nil {
			return nil, fmt.Errorf("%w: TLS needs a CA", ErrInvalidConfig)
		}
		rc, err := NewRenewingCert(o.CA, "ks-mc-proxy", o.DNSNames, o.IPs, ServingValidity)
		if err != nil {
			return nil, err
		}
		c := *pc
		c.TLS = rc.ServerTLS(nil)
		pc = &c
	}
	return NewProxy(pc)
}

// NewMetricsServer serves h at /metrics with the proxy port's bounds (small headers, short timeouts).
func NewMetricsServer(h http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	return &http.Server{Handler: mux, MaxHeaderBytes: DefaultMaxHeaderBytes,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second}
}
