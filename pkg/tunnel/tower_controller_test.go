package tunnel

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// TestControllerTowerDowngrade: through the Controller (informer, Authenticator, TowerPolicy,
// revalidation), a Tower agent of a Cluster is served until the Cluster gets
// ks-mc.io/agent-protocol=ks-mc; then its session is drained and closed and its retry refused.
func TestControllerTowerDowngrade(t *testing.T) {
	h := newHarness(t, "tcp")
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterGVR: "ClusterList"},
		clusterObj(testCluster, "proxy", 0, testToken, time.Now().Add(-time.Hour)))
	kube := fake.NewClientset(serviceWithIP(testCluster, "10.96.0.11"))
	log := h.logs.logger()
	cc := DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA, cc.BindAddress, cc.Logger = dyn, kube, h.ca, "127.0.0.1", &log
	base := freePortBase(t)
	cc.PortMin, cc.PortMax = base, base+20
	ctrl, err := NewController(cc)
	if err != nil {
		t.Fatal(err)
	}
	p := h.startWith(ctrl)
	ctrl.SetProxy(p)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ctrl.Close() })
	go func() { _ = ctrl.Run(ctx, 1) }()
	waitFor(t, "cache synced", ctrl.HasSynced)
	h.mustTower(towerOpts{})
	h.waitAgents(1)
	waitFor(t, "listener up for the tower agent", func() bool { return ctrl.ListenerAddr(testCluster) != nil })
	// Heartbeat: the Lease names the protocol.
	hb := &Heartbeat{Kube: kube, Namespace: "kubesphere-system", Identity: "p", Interval: time.Second, Proxy: p}
	hb.Beat(ctx, logr.Discard())
	l, err := kube.CoordinationV1().Leases("kubesphere-system").Get(ctx, kubesphere.HeartbeatLeaseName(testCluster), metav1.GetOptions{})
	if err != nil || l.Annotations[kubesphere.AgentProtocolAnnotation] != ProtocolTower || l.Annotations[kubesphere.HeartbeatAgentsAnnotation] != "1" {
		t.Fatalf("lease %v %v", l, err)
	}
	// A ks-mc agent joins: the Lease says ks-mc.
	h.startAgent(agentOpts{})
	h.waitAgents(2)
	hb.Beat(ctx, logr.Discard())
	l, _ = kube.CoordinationV1().Leases("kubesphere-system").Get(ctx, kubesphere.HeartbeatLeaseName(testCluster), metav1.GetOptions{})
	if l.Annotations[kubesphere.AgentProtocolAnnotation] != ProtocolKsMC || l.Annotations[kubesphere.HeartbeatAgentsAnnotation] != "2" {
		t.Fatalf("lease with both protocols: %v", l.Annotations)
	}
	// migrate marks the Cluster: the Tower session goes, its retry is refused.
	u, err := dyn.Resource(kubesphere.ClusterGVR).Get(ctx, testCluster, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.SetAnnotations(map[string]string{kubesphere.AgentProtocolAnnotation: ProtocolKsMC})
	if _, err := dyn.Resource(kubesphere.ClusterGVR).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tower session drained", func() bool { return p.TowerAgents(testCluster) == 0 })
	if p.Agents(testCluster) != 1 {
		t.Fatalf("agents %d, want the ks-mc one", p.Agents(testCluster))
	}
	c, err := h.towerDial(towerOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if c.ok || !strings.Contains(c.reply, "served by the ks-mc agent") {
		t.Fatalf("tower agent after migration: %v %q", c.ok, c.reply)
	}
}
