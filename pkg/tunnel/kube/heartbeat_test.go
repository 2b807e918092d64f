package kube

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

type fakeSessions struct {
	agents map[string]int
}

func (f *fakeSessions) PingAgents(c string) (int, time.Duration, error) {
	if f.agents[c] == 0 {
		return 0, 0, errors.New("session shutdown")
	}
	return f.agents[c], 3 * time.Millisecond, nil
}

func (f *fakeSessions) ConnectedClusters() []string {
	var out []string
	for c, n := range f.agents {
		if n > 0 {
			out = append(out, c)
		}
	}
	return out
}

func TestHeartbeatLeases(t *testing.T) {
	kube := fake.NewClientset()
	src := &fakeSessions{agents: map[string]int{"m1": 2}}
	h := &Heartbeat{Kube: kube, Namespace: "kubesphere-system", Identity: "tower-0", Interval: time.Second, Proxy: src}
	ctx := context.Background()
	get := func() (string, string, time.Time) {
		l, err := kube.CoordinationV1().Leases("kubesphere-system").Get(ctx, kubesphere.HeartbeatLeaseName("m1"), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Labels[kubesphere.HeartbeatClusterLabel] != "m1" || *l.Spec.HolderIdentity != "tower-0" || *l.Spec.LeaseDurationSeconds != 3 {
			t.Errorf("lease %+v", l)
		}
		return l.Annotations[kubesphere.HeartbeatAgentsAnnotation], l.Annotations[kubesphere.HeartbeatRTTAnnotation], l.Spec.RenewTime.Time
	}
	h.Beat(ctx, logr.Discard())
	if n, rtt, _ := get(); n != "2" || rtt != "3ms" {
		t.Errorf("connected: agents %s rtt %s", n, rtt)
	}
	// The agents leave: one last beat says 0, then the Lease is left to age.
	src.agents["m1"] = 0
	h.Beat(ctx, logr.Discard())
	n, _, renewed := get()
	if n != "0" {
		t.Errorf("disconnected: agents %s", n)
	}
	h.Beat(ctx, logr.Discard())
	if _, _, again := get(); !again.Equal(renewed) {
		t.Error("a cluster without agents keeps being renewed")
	}
}
