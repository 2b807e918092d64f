package kube

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// While the agent is down, KubeSphere 3.4's webhook refuses every update of the Cluster (it cannot
// reach the member): the proxy must back off instead of retrying AgentAvailable=False at once on
// every event. A change of what it wants to write (the agent is back) is tried at once.
func TestRefusedUpdateBacksOff(t *testing.T) {
	old := time.Now().Add(-time.Hour)
	obj := clusterObj("member1", "proxy", 0, testToken, old)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterGVR: "ClusterList"}, obj)
	var updates atomic.Int32
	refuse := atomic.Bool{}
	refuse.Store(true)
	dyn.PrependReactor("update", "clusters", func(k8stesting.Action) (bool, runtime.Object, error) {
		updates.Add(1)
		if refuse.Load() {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "cluster.kubesphere.io", Resource: "clusters"}, "member1",
				errorString(`admission webhook "validating-cluster.kubesphere.io" denied the request: dial tcp 10.96.0.11:6443: connect: connection refused`))
		}
		return false, nil, nil
	})
	kube := fake.NewClientset(serviceWithIP("member1", "10.96.0.11"))
	ca, err := tunnel.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	cc := DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA, cc.BindAddress = dyn, kube, ca, "127.0.0.1"
	base := freePortBase(t)
	cc.PortMin, cc.PortMax = base, base+20
	ctrl, err := NewController(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	if err := ctrl.informer.GetStore().Add(obj); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if err := ctrl.reconcile(ctx, "member1"); err != nil {
			t.Fatalf("reconcile %d: %v", i, err)
		}
	}
	if n := updates.Load(); n != 1 {
		t.Fatalf("20 reconciles while the webhook refuses: %d update attempts, want 1 (then backoff)", n)
	}
	if _, ok := ctrl.Refused("member1"); !ok {
		t.Fatal("the refusal is not recorded")
	}
	// The agent is back: a different update is tried at once, and admitted.
	refuse.Store(false)
	ctrl.SetProxy(fakeDialer{agents: 1})
	if err := ctrl.reconcile(ctx, "member1"); err != nil {
		t.Fatal(err)
	}
	if n := updates.Load(); n != 2 {
		t.Fatalf("the connected update was not tried at once: %d attempts", n)
	}
	if _, ok := ctrl.Refused("member1"); ok {
		t.Fatal("the refusal is kept after an admitted update")
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

type fakeDialer struct{ agents int }

func (f fakeDialer) DialStream(context.Context, string, tunnel.StreamHeader) (net.Conn, error) {
	return nil, errorString("no stream in this test")
}
func (f fakeDialer) Agents(string) int { return f.agents }
