package installer

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// Helpers around KubeSphere's Cluster objects, the agent Deployment and cluster identity, shared by
// join, unjoin and status.

// ClusterConditions reads status.conditions.
func ClusterConditions(c *unstructured.Unstructured) []kubesphere.ClusterCondition {
	raw, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	out := make([]kubesphere.ClusterCondition, 0, len(raw))
	for _, r := range raw {
		m, ok := r.(map[string]any)
		if !ok {
			continue
		}
		s := func(k string) string { v, _ := m[k].(string); return v }
		out = append(out, kubesphere.ClusterCondition{Type: s("type"), Status: s("status"), Reason: s("reason"), Message: s("message"), LastTransitionTime: s("lastTransitionTime")})
	}
	return out
}

// FindCondition returns the condition of the given type (nil when absent).
func FindCondition(conds []kubesphere.ClusterCondition, typ string) *kubesphere.ClusterCondition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

func conditionTrue(conds []kubesphere.ClusterCondition, typ string) bool {
	c := FindCondition(conds, typ)
	return c != nil && c.Status == "True"
}

// DescribeConditions renders "Initialized=True, AgentAvailable=False (Agent has not connected…)".
func DescribeConditions(conds []kubesphere.ClusterCondition) string {
	if len(conds) == 0 {
		return "no conditions yet"
	}
	parts := make([]string, 0, len(conds))
	for _, c := range conds {
		s := c.Type + "=" + c.Status
		if c.Status != "True" && c.Message != "" {
			s += " (" + c.Message + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// ClusterMemberUID is the member identity a Cluster is bound to: status.uid (set by KubeSphere once
// it reached the member), else the annotation ks-mc wrote when it created the Cluster.
func ClusterMemberUID(c *unstructured.Unstructured) string {
	if uid, _, _ := unstructured.NestedString(c.Object, "status", "uid"); uid != "" {
		return uid
	}
	return c.GetAnnotations()[kubesphere.MemberUIDAnnotation]
}

// IsHostCluster reports whether a Cluster is the host's own (label cluster-role.kubesphere.io/host).
func IsHostCluster(c *unstructured.Unstructured) bool {
	_, ok := c.GetLabels()[kubesphere.ClusterHostRoleLabel]
	return ok
}

// GetCluster reads a Cluster on the host; (nil, nil) when it does not exist.
func GetCluster(ctx context.Context, host *Clients, name string) (*unstructured.Unstructured, error) {
	c, err := host.Dynamic.Resource(kubesphere.ClusterGVR).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get Cluster %s: %w", name, err)
	}
	return c, nil
}

// ListClusters lists the host's Cluster objects.
func ListClusters(ctx context.Context, host *Clients) ([]unstructured.Unstructured, error) {
	list, err := host.Dynamic.Resource(kubesphere.ClusterGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list Clusters: %w", err)
	}
	return list.Items, nil
}

// KubeSystemUID is the UID of namespace kube-system, which KubeSphere uses as a cluster's identity.
func KubeSystemUID(ctx context.Context, c *Clients) (string, error) {
	ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("get namespace kube-system: %w", err)
	}
	return string(ns.UID), nil
}

// GetAgentDeployment reads the agent Deployment of a member: kubesphere-system/cluster-agent, else
// the migrated ks-mc agent (kubesphere.MigratedAgentName); (nil, nil) when there is neither. While
// migrate runs both exist and the Tower agent (cluster-agent) is returned.
func GetAgentDeployment(ctx context.Context, member *Clients) (*appsv1.Deployment, error) {
	ds, err := GetAgentDeployments(ctx, member)
	if err != nil || len(ds) == 0 {
		return nil, err
	}
	return ds[0], nil
}

// GetAgentDeployments reads every agent Deployment of a member (manifests.AgentNames order).
func GetAgentDeployments(ctx context.Context, member *Clients) ([]*appsv1.Deployment, error) {
	var out []*appsv1.Deployment
	for _, name := range manifests.AgentNames() {
		d, err := member.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get deployment %s/%s: %w", kubesphere.Namespace, name, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// AgentInfo is what an agent Deployment says about its connection (never the token).
type AgentInfo struct {
	Tunnel      kubesphere.Tunnel
	ClusterName string
	ProxyServer string
}

// InspectAgent reads the tunnel kind, cluster name and proxy address of an agent Deployment.
func InspectAgent(d *appsv1.Deployment) AgentInfo {
	var info AgentInfo
	if d == nil || len(d.Spec.Template.Spec.Containers) == 0 {
		return info
	}
	c := d.Spec.Template.Spec.Containers[0]
	info.Tunnel = kubesphere.TunnelTower
	if len(c.Command) == 0 && len(c.Args) > 0 && c.Args[0] == "agent" {
		info.Tunnel = kubesphere.TunnelKsMc
	}
	for _, a := range append(append([]string{}, c.Command...), c.Args...) {
		if v, ok := strings.CutPrefix(a, "--name="); ok {
			info.ClusterName = v
		}
		if v, ok := strings.CutPrefix(a, "--proxy-server="); ok {
			info.ProxyServer = v
		}
	}
	return info
}

// sameProxy compares two proxy addresses loosely (case, trailing slash).
func sameProxy(a, b string) bool {
	norm := func(s string) string { return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/") }
	return norm(a) == norm(b)
}

// ServerClock returns how far the API server's clock is ahead of this machine's (negative: behind),
// from the Date header of GET /version, and the request's round trip time.
type ServerClock func(ctx context.Context, c *Clients) (offset, rtt time.Duration, err error)

// APIServerClock implements ServerClock with the Clients' REST config.
func APIServerClock(ctx context.Context, c *Clients) (time.Duration, time.Duration, error) {
	if c.Config == nil {
		return 0, 0, fmt.Errorf("no REST config")
	}
	hc, err := rest.HTTPClientFor(c.Config)
	if err != nil {
		return 0, 0, err
	}
	u, err := url.Parse(c.Config.Host)
	if err != nil {
		return 0, 0, err
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/version"
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	end := time.Now()
	resp.Body.Close()
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return 0, 0, fmt.Errorf("no Date header in the API server's answer")
	}
	rtt := end.Sub(start)
	mid := start.Add(rtt / 2)
	// The header has second precision (truncated): add half a second to center the estimate.
	return date.Add(500 * time.Millisecond).Sub(mid), rtt, nil
}

// kubeSphereMinor parses "v3.4.1" into (3, 4, 1, true).
func kubeSphereVersion(v string) (major, minor, patch int, ok bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	n, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch)
	if err != nil && n < 2 {
		return 0, 0, 0, false
	}
	return major, minor, patch, n >= 2
}
