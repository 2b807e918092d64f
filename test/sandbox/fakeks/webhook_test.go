package fakeks

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// memberServer is a member apiserver that answers GET namespace kube-system with uid.
func memberServer(t *testing.T, uid string) *httptest.Server {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/namespaces/kube-system" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"kube-system","uid":"` + uid + `"}}`))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func kubeconfigFor(t *testing.T, server string) []byte {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["m"] = &clientcmdapi.Cluster{Server: server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["m"] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts["m"] = &clientcmdapi.Context{Cluster: "m", AuthInfo: "m"}
	cfg.CurrentContext = "m"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func clusterJSON(t *testing.T, uid string, kubeconfig []byte, finalizers ...string) json.RawMessage {
	obj := map[string]any{"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster",
		"metadata": map[string]any{"name": "member1", "finalizers": finalizers},
		"spec":     map[string]any{"connection": map[string]any{"type": "proxy", "kubeconfig": kubeconfig}},
		"status":   map[string]any{"uid": uid}}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The rule of KubeSphere v3.4.1 pkg/controller/cluster/cluster_webhook.go.
func TestClusterWebhookRule(t *testing.T) {
	w := &ClusterWebhook{Clients: newFakeClients(t), NodeIP: "127.0.0.1"}
	same := kubeconfigFor(t, memberServer(t, "uid-1").URL)
	other := kubeconfigFor(t, memberServer(t, "uid-2").URL)
	dead := httptest.NewTLSServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	gone := kubeconfigFor(t, deadURL)
	fin := "finalizer.cluster.kubesphere.io"
	for _, tc := range []struct {
		name     string
		op       string
		old, new json.RawMessage
		allowed  bool
		msg      string
	}{
		{"no status.uid yet", "UPDATE", clusterJSON(t, "", nil, fin), clusterJSON(t, "", gone), true, ""},
		{"same member", "UPDATE", clusterJSON(t, "uid-1", same, fin), clusterJSON(t, "uid-1", same), true, ""},
		{"another cluster's kubeconfig", "UPDATE", clusterJSON(t, "uid-1", same), clusterJSON(t, "uid-1", other), false, "different cluster"},
		{"member unreachable: finalizer removal refused", "UPDATE", clusterJSON(t, "uid-1", gone, fin), clusterJSON(t, "uid-1", gone), false, "connection refused"},
		{"clearing status.uid is checked against the old one", "UPDATE", clusterJSON(t, "uid-1", gone, fin), clusterJSON(t, "", gone), false, "connection refused"},
		{"no kubeconfig", "UPDATE", clusterJSON(t, "uid-1", nil, fin), clusterJSON(t, "uid-1", nil), false, "failed to load cluster config for member1"},
		{"delete is not checked", "DELETE", clusterJSON(t, "uid-1", gone, fin), nil, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := w.review(context.Background(), &admissionRequest{Operation: tc.op, Name: "member1", Object: tc.new, OldObject: tc.old})
			if resp.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v (%+v)", resp.Allowed, tc.allowed, resp.Result)
			}
			if !tc.allowed && (resp.Result == nil || resp.Result.Code != http.StatusForbidden || !strings.Contains(resp.Result.Message, tc.msg)) {
				t.Fatalf("result %+v, want 403 containing %q", resp.Result, tc.msg)
			}
		})
	}
}

func TestClusterWebhookConfigIsKubeSpheres(t *testing.T) {
	c := ClusterWebhookConfig("https://127.0.0.1:1/x", []byte("ca"))
	h := c.Webhooks[0]
	if c.Name != "cluster.kubesphere.io" || h.Name != "validating-cluster.kubesphere.io" || string(*h.FailurePolicy) != "Fail" ||
		len(h.Rules) != 1 || h.Rules[0].Operations[0] != "UPDATE" || h.Rules[0].Resources[0] != "clusters" || *h.TimeoutSeconds != 30 {
		t.Fatalf("%+v", c)
	}
}

// The AdmissionReview answer carries the denial in response.status (the apiserver shows its
// message), with the request's uid.
func TestClusterWebhookWire(t *testing.T) {
	w := &ClusterWebhook{Clients: newFakeClients(t), enabled: func(context.Context) bool { return true }}
	old := clusterJSON(t, "uid-1", nil)
	body, _ := json.Marshal(map[string]any{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
		"request": map[string]any{"uid": "req-1", "operation": "UPDATE", "name": "member1", "object": json.RawMessage(old), "oldObject": json.RawMessage(old)}})
	rec := httptest.NewRecorder()
	w.serveHTTP(rec, httptest.NewRequest(http.MethodPost, ClusterWebhookPath, strings.NewReader(string(body))))
	var out struct {
		APIVersion string `json:"apiVersion"`
		Response   struct {
			UID     string `json:"uid"`
			Allowed bool   `json:"allowed"`
			Status  struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"status"`
		} `json:"response"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1beta1" || out.Response.UID != "req-1" || out.Response.Allowed ||
		out.Response.Status.Code != 403 || !strings.Contains(out.Response.Status.Message, "failed to load cluster config") {
		t.Fatalf("answer %s", rec.Body.String())
	}
}
