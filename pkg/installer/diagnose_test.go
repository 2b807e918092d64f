package installer

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

func TestAgentLogCause(t *testing.T) {
	for logs, want := range map[string]string{
		`E connect to proxy err="tunnel: agent token rejected by proxy 10.0.0.1:8080 (401): bad token"`: CheckMemberAgent,
		`tunnel: unknown cluster "m1" at proxy 10.0.0.1:8080 (403)`:                                     CheckMemberAgent,
		`tunnel: handshake failed: proxy x answered 200 OK to the upgrade`:                              CheckHostAddress,
		`dial proxy 10.0.0.1:8081: connect: connection refused`:                                         CheckHostAddress,
		`dial tcp: lookup proxy.example: no such host`:                                                  CheckHostAddress,
		`connected to proxy`: "",
		"":                   "",
	} {
		if _, got := agentLogCause(logs); got != want {
			t.Errorf("%q → %q, want %q", logs, got, want)
		}
	}
}

func proxyCluster(name string, conds ...string) unstructured.Unstructured {
	c, _ := manifests.RenderCluster(manifests.ClusterValues{Name: name})
	var items []any
	for _, typ := range conds {
		items = append(items, map[string]any{"type": typ, "status": "True"})
	}
	_ = unstructured.SetNestedSlice(c.Object, items, "status", "conditions")
	return *c
}

// Hostile inputs from the cluster: malformed heartbeat annotations, a renewTime in the future, a
// negative lease duration, a kubeconfig that is not base64 or not a kubeconfig, huge log lines.
func TestDiagnoseHostileInputs(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	proxy, _ := manifests.ProxyDeployment(manifests.DefaultProxyValues())
	neg := int32(-5)
	future := metav1.NewMicroTime(now.Add(time.Hour))
	bad := []unstructured.Unstructured{proxyCluster("a", kubesphere.ConditionAgentAvailable), proxyCluster("b", kubesphere.ConditionAgentAvailable), proxyCluster("c")}
	_ = unstructured.SetNestedField(bad[0].Object, "%%%not base64", "spec", "connection", "kubeconfig")
	_ = unstructured.SetNestedField(bad[1].Object, "bm90IGEga3ViZWNvbmZpZw==", "spec", "connection", "kubeconfig")
	h := &hostData{c: &Clients{Context: "h"}, tower: proxy, clusters: bad, svcProxy: map[string]probeResult{},
		leases: map[string]*coordinationv1.Lease{
			"a": {ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kubesphere.HeartbeatAgentsAnnotation: "lots", kubesphere.HeartbeatRTTAnnotation: strings.Repeat("9", 5000)}},
				Spec: coordinationv1.LeaseSpec{RenewTime: &future, LeaseDurationSeconds: &neg}},
			"b": {ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kubesphere.HeartbeatAgentsAnnotation: "-3"}}},
		}}
	m := &memberData{c: &Clients{Context: "c"}, cluster: "c", matchedBy: "agent --name", logs: map[string]string{"p": strings.Repeat("x", 1<<20) + " token rejected"},
		agent: &appsv1.Deployment{}}
	fs := runChecks(h, []*memberData{m}, now)
	get := func(id, subj string) *Finding {
		for i := range fs {
			if fs[i].ID == id && fs[i].Subject == subj {
				return &fs[i]
			}
		}
		t.Fatalf("no %s for %s", id, subj)
		return nil
	}
	for _, s := range []string{"cluster/a", "cluster/b"} {
		if f := get(CheckClusterTunnel, s); f.Status != DiagFail {
			t.Errorf("%s: a malformed heartbeat must not count as live: %+v", s, f)
		}
		if f := get(CheckClusterCertificate, s); f.Status != DiagFail {
			t.Errorf("%s: a broken kubeconfig: %+v", s, f)
		}
	}
	for _, f := range fs {
		for _, e := range append([]string{f.Summary}, f.Evidence...) {
			if len(e) > 2000 {
				t.Errorf("%s %s: %d-byte evidence echoes the input", f.ID, f.Subject, len(e))
			}
		}
	}
}
