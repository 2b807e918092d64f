package installer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// leaseRenewal is the heartbeat Lease's renewTime before the ks-mc agent starts (zero when none).
func (m *Migrate) leaseRenewal(ctx context.Context, cluster string) time.Time {
	l, err := m.host.Kube.CoordinationV1().Leases(kubesphere.Namespace).Get(ctx, kubesphere.HeartbeatLeaseName(cluster), metav1.GetOptions{})
	if err != nil || l.Spec.RenewTime == nil {
		return time.Time{}
	}
	return l.Spec.RenewTime.Time
}

// LeaseProtocol reads the protocol of a cluster's connected agent sessions from the proxy's
// heartbeat Lease: ks-mc or tower; "" when the Lease says nothing (an older proxy, or no session).
func LeaseProtocol(l *coordinationv1.Lease) string {
	if l == nil {
		return ""
	}
	return l.Annotations[kubesphere.AgentProtocolAnnotation]
}

// leaseServesKsMc reports whether a Lease renewed after baseline says a ks-mc session answered.
func leaseServesKsMc(l *coordinationv1.Lease, baseline time.Time) (bool, string) {
	if l == nil {
		return false, "no heartbeat Lease yet"
	}
	agents, _ := strconv.Atoi(l.Annotations[kubesphere.HeartbeatAgentsAnnotation])
	proto := LeaseProtocol(l)
	renewed := l.Spec.RenewTime != nil && l.Spec.RenewTime.After(baseline)
	switch {
	case proto != string(kubesphere.TunnelKsMc):
		if proto == "" {
			proto = "none"
		}
		return false, fmt.Sprintf("heartbeat: protocol %s, %d session(s)", proto, agents)
	case agents == 0:
		return false, "heartbeat: protocol ks-mc, 0 sessions answered"
	case !renewed:
		return false, "heartbeat: not renewed since the ks-mc agent started"
	}
	return true, fmt.Sprintf("heartbeat: protocol ks-mc, %d session(s) answered a ping", agents)
}

// waitServes waits until the proxy's heartbeat Lease says a ks-mc session of cluster answers,
// then sends one request through the per-cluster listener.
func (m *Migrate) waitServes(ctx context.Context, mm *migrateMember, cluster string, baseline time.Time) error {
	leaseName := kubesphere.HeartbeatLeaseName(cluster)
	for {
		l, err := m.host.Kube.CoordinationV1().Leases(kubesphere.Namespace).Get(ctx, leaseName, metav1.GetOptions{})
		var observed string
		switch {
		case apierrors.IsNotFound(err):
			observed = "no heartbeat Lease " + leaseName + " yet"
		case err != nil:
			observed = err.Error()
		default:
			ok, why := leaseServesKsMc(l, baseline)
			observed = why
			if ok {
				mm.res.Evidence = append(mm.res.Evidence, why)
				m.rep.Step(fmt.Sprintf("host: the ks-mc session of %s serves (%s)", cluster, why))
				return m.probe(ctx, mm, cluster)
			}
		}
		m.rep.Progress(fmt.Sprintf("waiting for the ks-mc session of %s: %s (%s left)", cluster, observed, max(time.Until(mm.deadline).Round(time.Second), 0)))
		if time.Now().After(mm.deadline) {
			return &migrateAdvice{err: fmt.Errorf("timed out after %s waiting for the ks-mc agent's session (last seen: %s)", m.opts.Timeout, observed),
				advice: fmt.Sprintf("see why it does not connect: kubectl -n %s logs deployment/%s%s, and kubectl ks-mc diagnose --host-context %s%s",
					kubesphere.Namespace, mm.deployName, mm.c.contextFlag(), m.host.Context, mm.c.contextFlag())}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(m.opts.PollInterval):
		}
	}
}

// probe sends requests through the per-cluster listener until one is answered (or the member's
// time is up). The proxy sends new requests to the ks-mc session once it is up, so an answer now
// went through it.
func (m *Migrate) probe(ctx context.Context, mm *migrateMember, cluster string) error {
	var last error
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := m.opts.Probe(pctx, m.host, cluster)
		cancel()
		if err == nil {
			ev := "a request through the per-cluster listener (" + kubesphere.ServicePrefix + cluster + ") was answered"
			mm.res.Evidence = append(mm.res.Evidence, ev)
			m.rep.Step("host: " + ev)
			return nil
		}
		if errors.Is(err, ErrListenerUnreachable) {
			ev := "the per-cluster listener is not reachable from this machine (" + firstLine(err.Error()) + "): the heartbeat is the evidence"
			mm.res.Evidence = append(mm.res.Evidence, ev)
			m.rep.Warn(ev)
			return nil
		}
		last = err
		m.rep.Progress(fmt.Sprintf("waiting for a request through %s%s to be answered: %s", kubesphere.ServicePrefix, cluster, firstLine(err.Error())))
		if time.Now().After(mm.deadline) {
			return &migrateAdvice{err: fmt.Errorf("the ks-mc session is up but no request through the per-cluster listener was answered: %w", last),
				advice: fmt.Sprintf("kubectl ks-mc diagnose --host-context %s%s", m.host.Context, mm.c.contextFlag())}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(m.opts.PollInterval):
		}
	}
}

// ErrListenerUnreachable marks a probe whose request did not reach the per-cluster listener from
// this machine at all (as opposed to one the member answered).
var ErrListenerUnreachable = errors.New("per-cluster listener unreachable")

// ProbeClusterListener sends GET /version through the per-cluster listener of cluster, the way
// ks-apiserver reaches a member: through the host apiserver's service proxy to Service mc-<cluster>.
// An answer of the member's apiserver (also 401/403 for the anonymous request) proves the tunnel.
// Any other error is inconclusive and wraps ErrListenerUnreachable: the service proxy may have no
// route to the proxy pod at all (no endpoints, an egress policy, "address not allowed"), and a
// listener without a session would have failed ks-apiserver's requests already.
func ProbeClusterListener(ctx context.Context, host *Clients, cluster string) error {
	return classifyProbeError(serviceProxyVersion(ctx, host, cluster))
}

// classifyProbeError: an answer of the ks-mc proxy's per-cluster listener itself (its 503/502
// Status "ks-mc proxy: cluster …", pkg/tunnel/listener.go) reached the listener and says no agent
// served: that is conclusive and returned as is. Any other error is inconclusive (wraps
// ErrListenerUnreachable).
func classifyProbeError(err error) error {
	if err == nil {
		return nil
	}
	if strings.Contains(err.Error(), "ks-mc proxy: cluster ") {
		return err
	}
	return fmt.Errorf("%w: %v", ErrListenerUnreachable, err)
}
