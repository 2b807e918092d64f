package cmd

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// fakeKS returns clients of a fake cluster with a ClusterConfiguration of the given role, its
// kube-system UID, and the given Clusters.
func fakeKS(t *testing.T, ctxName, role, uid string, objs ...runtime.Object) *installer.Clients {
	t.Helper()
	cc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "installer.kubesphere.io/v1alpha1", "kind": "ClusterConfiguration",
		"metadata": map[string]any{"name": "ks-installer", "namespace": "kubesphere-system"},
		"spec":     map[string]any{"multicluster": map[string]any{"clusterRole": role}},
		"status":   map[string]any{"core": map[string]any{"version": "v3.4.1"}},
	}}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList", kubesphere.ClusterGVR: "ClusterList"}, append([]runtime.Object{cc}, objs...)...)
	kube := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: types.UID(uid)}})
	return &installer.Clients{Kube: kube, Dynamic: dyn, Context: ctxName}
}

func testClusterObj(name, uid string, host bool, conds ...map[string]any) *unstructured.Unstructured {
	c, _ := manifests.RenderCluster(manifests.ClusterValues{Name: name})
	if host {
		c.SetLabels(map[string]string{kubesphere.ClusterHostRoleLabel: ""})
		_ = unstructured.SetNestedField(c.Object, "direct", "spec", "connection", "type")
	}
	_ = unstructured.SetNestedField(c.Object, uid, "status", "uid")
	_ = unstructured.SetNestedField(c.Object, int64(2), "status", "nodeCount")
	items := make([]any, 0, len(conds))
	for _, cd := range conds {
		items = append(items, cd)
	}
	_ = unstructured.SetNestedSlice(c.Object, items, "status", "conditions")
	return c
}

func TestStatusTableAndJSON(t *testing.T) {
	now := time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC)
	ts := now.Add(-5 * time.Minute).Format(time.RFC3339)
	host := fakeKS(t, "host", "host", "uid-h",
		testClusterObj("host", "uid-h", true, map[string]any{"type": "Ready", "status": "True", "lastTransitionTime": ts}),
		testClusterObj("member1", "uid-1", false,
			map[string]any{"type": "AgentAvailable", "status": "True", "lastTransitionTime": ts},
			map[string]any{"type": "Ready", "status": "True", "lastTransitionTime": ts}),
		testClusterObj("member2", "uid-2", false,
			map[string]any{"type": "AgentAvailable", "status": "False", "lastTransitionTime": ts},
			map[string]any{"type": "Ready", "status": "False", "message": "Agent has not connected to proxy.", "lastTransitionTime": ts}))
	member := fakeKS(t, "member1", "member", "uid-1")
	for _, format := range []string{"", "json"} {
		f, out, _ := testFactory(t, "member1")
		o := NewStatusOptions(f.Streams)
		o.Output = format
		o.Now = func() time.Time { return now }
		o.factory, o.Host.Context = useClients(f, member, host), "host"
		if err := o.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		if format == "json" {
			var rep installer.StatusReport
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if len(rep.Clusters) != 3 || len(rep.Contexts) != 2 || rep.Contexts[1].Cluster != "member1" {
				t.Errorf("report = %+v", rep)
			}
			continue
		}
		s := out.String()
		for _, want := range []string{"member1  member  proxy       Connected     True", "member2  member  proxy       Disconnected  False", "5m ago",
			"member2: Agent has not connected to proxy.", "member1  member  v3.4.1      member1", "host     host    v3.4.1      host"} {
			if !strings.Contains(s, want) {
				t.Errorf("table lacks %q:\n%s", want, s)
			}
		}
	}
}

func TestRenderAgentRedactsAndExplains(t *testing.T) {
	token := strings.Repeat("ab", 32)
	c := testClusterObj("member1", "uid-1", false)
	_ = unstructured.SetNestedField(c.Object, token, "spec", "connection", "token")
	host := fakeKS(t, "host", "host", "uid-h", c)
	_, _ = host.Kube.CoreV1().ConfigMaps("kubesphere-system").Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kubesphere-config", Namespace: "kubesphere-system"},
		Data:       map[string]string{"kubesphere.yaml": "authentication:\n  jwtSecret: Sekr3tSekr3tSekr3t\nmulticluster:\n  clusterRole: host\n  enable: true\n  proxyPublishAddress: http://203.0.113.1:30080\n"}}, metav1.CreateOptions{})
	// A ks-mc agent over http:// is rendered only when the host's proxy accepts plaintext agents.
	{
		f, _, _ := testFactory(t, "host")
		o := &RenderAgentOptions{IOStreams: f.Streams, Name: "member1", Tunnel: "ks-mc", Output: "yaml"}
		o.factory = useClients(f, nil, host)
		err := o.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), "--allow-plaintext-agents") || !strings.Contains(err.Error(), "https://203.0.113.1:30080") {
			t.Fatalf("ks-mc agent over http:// without the host's consent: %v", err)
		}
		if strings.Contains(err.Error(), token) {
			t.Fatal("the token leaked into the error")
		}
	}
	pv := manifests.DefaultProxyValues()
	pv.AllowPlaintextAgents = true
	proxy, err := manifests.ProxyDeployment(pv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.Kube.AppsV1().Deployments("kubesphere-system").Create(context.Background(), proxy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tun := range []string{"tower", "ks-mc"} {
		f, out, errb := testFactory(t, "host")
		o := &RenderAgentOptions{IOStreams: f.Streams, Name: "member1", Tunnel: tun, Output: "yaml"}
		o.factory = useClients(f, nil, host)
		if err := o.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		all := out.String() + errb.String()
		if strings.Contains(all, token) || strings.Contains(all, "Sekr3t") {
			t.Fatalf("%s: a secret leaked:\n%s", tun, all)
		}
		if !strings.Contains(out.String(), "--proxy-server=http://203.0.113.1:30080") || !strings.Contains(errb.String(), "jsonpath='{.spec.connection.token}'") {
			t.Errorf("%s: output:\n%s\n%s", tun, out, errb)
		}
	}
}
