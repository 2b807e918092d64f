package kube

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Cluster is the part of KubeSphere's cluster.kubesphere.io/v1alpha1 Cluster the proxy reads.
// Writes go through the unstructured object, so fields this type does not know survive.
type Cluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ClusterSpec   `json:"spec,omitempty"`
	Status            ClusterStatus `json:"status,omitempty"`
}

// ClusterSpec is the Cluster's spec.
type ClusterSpec struct {
	JoinFederation bool       `json:"joinFederation,omitempty"`
	Enable         bool       `json:"enable,omitempty"`
	Provider       string     `json:"provider,omitempty"`
	Connection     Connection `json:"connection,omitempty"`
}

// Connection is spec.connection.
type Connection struct {
	Type                    string `json:"type,omitempty"`
	KubernetesAPIEndpoint   string `json:"kubernetesAPIEndpoint,omitempty"`
	KubeSphereAPIEndpoint   string `json:"kubesphereAPIEndpoint,omitempty"`
	KubeConfig              []byte `json:"kubeconfig,omitempty"` // base64 in the API
	Token                   string `json:"token,omitempty"`
	KubernetesAPIServerPort int32  `json:"kubernetesAPIServerPort,omitempty"`
	KubeSphereAPIServerPort int32  `json:"kubesphereAPIServerPort,omitempty"`
}

// ClusterStatus is the part of status the proxy writes.
type ClusterStatus struct {
	Conditions []kubesphere.ClusterCondition `json:"conditions,omitempty"`
}

// ClusterFromUnstructured converts u.
func ClusterFromUnstructured(u *unstructured.Unstructured) (*Cluster, error) {
	c := &Cluster{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, c); err != nil {
		return nil, fmt.Errorf("decode Cluster %s: %w", u.GetName(), err)
	}
	return c, nil
}

// Served reports whether the proxy serves c: joinFederation and connection type proxy. A
// Terminating Cluster is still served until its finalizers are gone and the object with them:
// KubeSphere 3.4's Cluster webhook admits ks-controller-manager's finalizer removal only after
// reaching the member through the tunnel (kubesphere/kubesphere v3.4.1
// pkg/controller/cluster/cluster_webhook.go), and Tower does the same (kubesphere/tower v0.2.1
// pkg/proxy/proxy.go stops serving on the informer's delete only).
func (c *Cluster) Served() bool {
	return c.Spec.JoinFederation && c.Spec.Connection.Type == kubesphere.ConnectionTypeProxy
}

// setCondition sets a condition on u's status.conditions, keeping unknown fields and other
// conditions; lastTransitionTime changes only with the status. It returns whether u changed.
func setCondition(u *unstructured.Unstructured, typ, status, reason, message string, now time.Time) (bool, error) {
	conds, _, err := unstructured.NestedSlice(u.Object, "status", "conditions")
	if err != nil {
		return false, fmt.Errorf("read status.conditions: %w", err)
	}
	ts := now.UTC().Format(time.RFC3339)
	for i, raw := range conds {
		m, ok := raw.(map[string]any)
		if !ok || m["type"] != typ {
			continue
		}
		if m["status"] == status && m["reason"] == reason && m["message"] == message {
			return false, nil
		}
		if m["status"] != status {
			m["lastTransitionTime"] = ts
		}
		m["status"], m["reason"], m["message"], m["lastUpdateTime"] = status, reason, message, ts
		conds[i] = m
		return true, unstructured.SetNestedSlice(u.Object, conds, "status", "conditions")
	}
	conds = append(conds, map[string]any{
		"type": typ, "status": status, "reason": reason, "message": message,
		"lastUpdateTime": ts, "lastTransitionTime": ts,
	})
	return true, unstructured.SetNestedSlice(u.Object, conds, "status", "conditions")
}
