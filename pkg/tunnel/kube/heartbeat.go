package kube

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// The heartbeat Lease's names are in pkg/kubesphere (HeartbeatLeaseName and the Heartbeat* labels
// and annotations).

// HeartbeatProtocolAnnotation (kubesphere.AgentProtocolAnnotation) is the protocol of the session
// that serves: tunnel.ProtocolKsMC or tunnel.ProtocolTower; kept from the last beat with a session.
const HeartbeatProtocolAnnotation = kubesphere.AgentProtocolAnnotation

// DefaultHeartbeatInterval is how often the Leases are renewed; the Lease lasts three intervals.
const DefaultHeartbeatInterval = 10 * time.Second

// Heartbeat renews the per-cluster Leases.
type Heartbeat struct {
	Kube      kubernetes.Interface
	Namespace string
	// Identity is the proxy pod's name (HolderIdentity).
	Identity string
	Interval time.Duration
	Proxy    interface {
		PingAgents(cluster string) (int, time.Duration, error)
		ConnectedClusters() []string
	}
	Logger *logr.Logger

	mu   sync.Mutex
	live map[string]bool
}

// Run renews the Leases every Interval until ctx ends.
func (h *Heartbeat) Run(ctx context.Context) {
	log := klog.Background().WithName("heartbeat")
	if h.Logger != nil {
		log = *h.Logger
	}
	if h.Interval <= 0 {
		h.Interval = DefaultHeartbeatInterval
	}
	t := time.NewTicker(h.Interval)
	defer t.Stop()
	for {
		h.Beat(ctx, log)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Beat writes one round of Leases: every connected cluster, and once more (agents 0) every cluster
// that was connected at the previous beat.
func (h *Heartbeat) Beat(ctx context.Context, log logr.Logger) {
	h.mu.Lock()
	prev := h.live
	h.mu.Unlock()
	now := map[string]bool{}
	for _, c := range h.Proxy.ConnectedClusters() {
		now[c] = true
	}
	for c := range prev {
		if !now[c] {
			now[c] = false
		}
	}
	next := map[string]bool{}
	for cluster := range now {
		n, rtt, err := h.Proxy.PingAgents(cluster)
		if n > 0 {
			next[cluster] = true
		}
		proto := ""
		if pp, ok := h.Proxy.(interface{ Protocol(string) string }); ok {
			proto = pp.Protocol(cluster)
		}
		if werr := h.write(ctx, cluster, n, rtt, err, proto); werr != nil {
			log.V(1).Info("heartbeat lease not written", "cluster", cluster, "err", werr.Error())
		}
	}
	h.mu.Lock()
	h.live = next
	h.mu.Unlock()
}

func (h *Heartbeat) write(ctx context.Context, cluster string, agents int, rtt time.Duration, pingErr error, proto string) error {
	leases := h.Kube.CoordinationV1().Leases(h.Namespace)
	name := kubesphere.HeartbeatLeaseName(cluster)
	ctx, cancel := context.WithTimeout(ctx, h.Interval)
	defer cancel()
	dur := int32(3 * h.Interval / time.Second)
	if dur < 1 {
		dur = 1
	}
	ann := map[string]string{kubesphere.HeartbeatAgentsAnnotation: strconv.Itoa(agents), kubesphere.HeartbeatRTTAnnotation: rtt.String()}
	if pingErr != nil && agents == 0 {
		ann[kubesphere.HeartbeatErrorAnnotation] = pingErr.Error()
	}
	if proto != "" {
		ann[HeartbeatProtocolAnnotation] = proto
	}
	renew := metav1.NewMicroTime(time.Now())
	id := h.Identity
	l, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.Namespace, Annotations: ann,
				Labels: map[string]string{kubesphere.HeartbeatClusterLabel: cluster, kubesphere.ManagedByLabel: kubesphere.ManagedByValue}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &dur, RenewTime: &renew},
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{FieldManager: kubesphere.FieldManager})
		return err
	}
	if err != nil {
		return fmt.Errorf("get lease %s: %w", name, err)
	}
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	delete(l.Annotations, kubesphere.HeartbeatErrorAnnotation)
	for k, v := range ann {
		l.Annotations[k] = v
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &id, &dur, &renew
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{FieldManager: kubesphere.FieldManager})
	return err
}
