package kube

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// A Terminating Cluster whose finalizers are not gone yet is still served: KubeSphere 3.4's
// webhook must reach the member through the tunnel to admit the finalizer removal.
func TestServedWhileTerminating(t *testing.T) {
	now := metav1.Now()
	c := &Cluster{ObjectMeta: metav1.ObjectMeta{Name: "m1", DeletionTimestamp: &now, Finalizers: []string{"finalizer.cluster.kubesphere.io"}},
		Spec: ClusterSpec{JoinFederation: true, Connection: Connection{Type: kubesphere.ConnectionTypeProxy}}}
	if !c.Served() {
		t.Fatal("a Terminating Cluster with finalizers must stay served")
	}
	c.Spec.Connection.Type = "direct"
	if c.Served() {
		t.Fatal("a direct Cluster is not served")
	}
}
