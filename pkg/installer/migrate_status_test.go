package installer

import (
	"context"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// diagnose says which protocol each member uses (the proxy's heartbeat Lease) and flags a member
// on a Tower agent as weaker, with the migrate command; behind KubeSphere's Tower every member is
// on a Tower agent and the fix starts with init-host --tunnel=ks-mc.
func TestDiagnoseAgentProtocol(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	proxy, _ := manifests.ProxyDeployment(manifests.DefaultProxyValues())
	clusters := []unstructured.Unstructured{proxyCluster("t", kubesphere.ConditionAgentAvailable), proxyCluster("k", kubesphere.ConditionAgentAvailable), proxyCluster("u")}
	lease := func(p string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kubesphere.HeartbeatAgentsAnnotation: "1", kubesphere.AgentProtocolAnnotation: p}}}
	}
	h := &hostData{c: &Clients{Context: "h"}, tower: proxy, clusters: clusters, svcProxy: map[string]probeResult{},
		leases: map[string]*coordinationv1.Lease{"t": lease("tower"), "k": lease("ks-mc")}}
	fs := runChecks(h, nil, now)
	find := func(fs []Finding, subj string) *Finding {
		for i := range fs {
			if fs[i].ID == CheckClusterProtocol && fs[i].Subject == subj {
				return &fs[i]
			}
		}
		return nil
	}
	if f := find(fs, "cluster/t"); f == nil || f.Status != DiagWarn || !strings.Contains(strings.Join(f.Evidence, " "), "command line") ||
		f.Fix == nil || strings.Join(f.Fix.KsMc, " ") != "migrate --host-context h --context CONTEXT_OF_t" {
		t.Errorf("Tower member: %+v", f)
	}
	if f := find(fs, "cluster/k"); f == nil || f.Status != DiagOK {
		t.Errorf("ks-mc member: %+v", f)
	}
	if f := find(fs, "cluster/u"); f != nil {
		t.Errorf("unknown protocol reported: %+v", f)
	}
	// Behind Tower.
	h.tower = towerDeployment()
	fs = runChecks(h, nil, now)
	if f := find(fs, "cluster/k"); f == nil || f.Status != DiagWarn || strings.Join(f.Fix.KsMc, " ") != "init-host --context h --tunnel=ks-mc" || !strings.Contains(f.Fix.Action, "migrate --host-context h") {
		t.Errorf("Tower host: %+v", f)
	}
}

// status shows the protocol of each member and a warning for members on a Tower agent.
func TestStatusAgentProtocol(t *testing.T) {
	f := migrateFixture(t)
	ctx := context.Background()
	now := metav1.NewMicroTime(time.Now())
	_, _ = f.host.kube.CoordinationV1().Leases(kubesphere.Namespace).Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: kubesphere.HeartbeatLeaseName("member1"), Namespace: kubesphere.Namespace,
			Labels: map[string]string{kubesphere.HeartbeatClusterLabel: "member1"}, Annotations: map[string]string{kubesphere.AgentProtocolAnnotation: "tower"}},
		Spec: coordinationv1.LeaseSpec{RenewTime: &now}}, metav1.CreateOptions{})
	rep, err := Status(ctx, f.host.c, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Clusters {
		if r.Name == "member1" && (r.Protocol != "tower" || !strings.Contains(r.Weaker, "kubectl ks-mc migrate --host-context host --context <context of member1>")) {
			t.Errorf("row %+v", r)
		}
	}
}
