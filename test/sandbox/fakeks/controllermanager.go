package fakeks

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

// ControllerManager plays ks-controller-manager's cluster controller on a host (it does nothing
// while kubesphere-config says multicluster.enable is false).
type ControllerManager struct {
	Clients *Clients
	// NodeIP is where this cluster's pods listen: Service ClusterIPs are mapped to it, because the
	// sandbox has no kube-proxy.
	NodeIP string
	Log    io.Writer
	// Resync is the probe period (default 3s; KubeSphere's is 2m).
	Resync time.Duration
	// Kubeconfig is this cluster's admin kubeconfig: KubeSphere 3.4 writes the host's own into the
	// host Cluster's spec.connection.kubeconfig (pkg/controller/cluster/cluster_controller.go
	// reconcileHostCluster), so the Cluster webhook can reach it like any member.
	Kubeconfig []byte
}

// Run loops until ctx ends.
func (m *ControllerManager) Run(ctx context.Context) {
	resync := m.Resync
	if resync == 0 {
		resync = 3 * time.Second
	}
	for {
		if err := m.reconcileAll(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(m.Log, "ks-controller-manager: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(resync):
		}
	}
}

// hostSettings reads multicluster.enable and hostClusterName from kubesphere-config.
func (m *ControllerManager) hostSettings(ctx context.Context) (bool, string, error) {
	cm, err := m.Clients.Kube.CoreV1().ConfigMaps(Namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return false, "", nil
		}
		return false, "", err
	}
	cfg := map[string]any{}
	if err := yaml.Unmarshal([]byte(cm.Data[ConfigKey]), &cfg); err != nil {
		return false, "", fmt.Errorf("parse %s: %w", ConfigKey, err)
	}
	enable, _, _ := unstructured.NestedBool(cfg, "multicluster", "enable")
	name, _, _ := unstructured.NestedString(cfg, "multicluster", "hostClusterName")
	if name == "" {
		name = HostClusterName
	}
	return enable, name, nil
}

func (m *ControllerManager) reconcileAll(ctx context.Context) error {
	enable, hostName, err := m.hostSettings(ctx)
	if err != nil || !enable {
		return err
	}
	if err := m.ensureHostCluster(ctx, hostName); err != nil {
		return err
	}
	list, err := m.Clients.Dynamic.Resource(ClusterGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list clusters: %w", err)
	}
	for i := range list.Items {
		c := &list.Items[i]
		if c.GetName() == hostName {
			continue
		}
		if err := m.reconcile(ctx, c); err != nil && ctx.Err() == nil {
			fmt.Fprintf(m.Log, "ks-controller-manager: cluster %s: %v\n", c.GetName(), err)
		}
	}
	return nil
}

// ensureHostCluster creates the host's own Cluster object, as KubeSphere does when it becomes a host.
func (m *ControllerManager) ensureHostCluster(ctx context.Context, name string) error {
	clusters := m.Clients.Dynamic.Resource(ClusterGVR)
	if cur, err := clusters.Get(ctx, name, metav1.GetOptions{}); err == nil {
		// "no kubeconfig, not likely to happen": KubeSphere fills it in.
		if kc, _, _ := unstructured.NestedString(cur.Object, "spec", "connection", "kubeconfig"); kc == "" && len(m.Kubeconfig) > 0 {
			_ = unstructured.SetNestedField(cur.Object, base64.StdEncoding.EncodeToString(m.Kubeconfig), "spec", "connection", "kubeconfig")
			if _, err := clusters.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("set host cluster %s kubeconfig: %w", name, err)
			}
		}
		return nil
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	ns, err := m.Clients.Kube.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		return err
	}
	ver, err := m.Clients.Kube.Discovery().ServerVersion()
	if err != nil {
		return err
	}
	nodes, err := m.Clients.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	now := time.Now().UTC().Format(time.RFC3339)
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cluster.kubesphere.io/v1alpha1",
		"kind":       "Cluster",
		"metadata": map[string]any{
			"name":        name,
			"labels":      map[string]any{"cluster-role.kubesphere.io/host": "", "kubesphere.io/managed": "true"},
			"annotations": map[string]any{"kubesphere.io/description": "The description was created by KubeSphere automatically. It is recommended that you use the Host Cluster to manage clusters only and deploy workloads on Member Clusters."},
			"finalizers":  []any{ClusterFinalizer},
		},
		"spec": map[string]any{
			"joinFederation": true, "enable": true, "provider": "kubesphere",
			"connection": map[string]any{"type": "direct", "kubernetesAPIEndpoint": m.Clients.Config.Host,
				"kubeconfig": base64.StdEncoding.EncodeToString(m.Kubeconfig)},
		},
		"status": map[string]any{
			"kubernetesVersion": ver.GitVersion, "kubeSphereVersion": KubeSphereVer,
			"nodeCount": int64(len(nodes.Items)), "uid": string(ns.UID),
			"conditions": []any{
				map[string]any{"type": "Federated", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now, "reason": "", "message": ""},
				map[string]any{"type": "Ready", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now, "reason": "Ready", "message": "Cluster is available now"},
			},
		},
	}}
	if _, err := clusters.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create host cluster %s: %w", name, err)
	}
	fmt.Fprintf(m.Log, "ks-controller-manager: created host cluster %s\n", name)
	return nil
}

// probe is what the controller learns of a member.
type probe struct {
	version, uid string
	nodes        int64
	err          error
}

func (m *ControllerManager) reconcile(ctx context.Context, c *unstructured.Unstructured) error {
	clusters := m.Clients.Dynamic.Resource(ClusterGVR)
	if c.GetDeletionTimestamp() != nil {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := clusters.Get(ctx, c.GetName(), metav1.GetOptions{})
			if err != nil {
				return client404(err)
			}
			if !removeString(cur, ClusterFinalizer) {
				return nil
			}
			_, err = clusters.Update(ctx, cur, metav1.UpdateOptions{})
			return err
		})
	}
	kc, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
	var p *probe
	if kc != "" {
		p = m.probe(ctx, kc)
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := clusters.Get(ctx, c.GetName(), metav1.GetOptions{})
		if err != nil {
			return client404(err)
		}
		before := mustJSON(cur.Object)
		addString(cur, ClusterFinalizer)
		if p != nil {
			now := time.Now().UTC().Format(time.RFC3339)
			if p.err == nil {
				_ = unstructured.SetNestedField(cur.Object, p.version, "status", "kubernetesVersion")
				_ = unstructured.SetNestedField(cur.Object, KubeSphereVer, "status", "kubeSphereVersion")
				_ = unstructured.SetNestedField(cur.Object, p.nodes, "status", "nodeCount")
				_ = unstructured.SetNestedField(cur.Object, p.uid, "status", "uid")
				SetCondition(cur, "Federated", "True", "", "", now)
				SetCondition(cur, "Ready", "True", "Ready", "Cluster is available now", now)
			} else {
				SetCondition(cur, "Ready", "False", "Unavailable", p.err.Error(), now)
			}
		}
		if mustJSON(cur.Object) == before {
			return nil
		}
		_, err = clusters.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

func client404(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// probe reaches the member through the Cluster's kubeconfig.
func (m *ControllerManager) probe(ctx context.Context, kubeconfigB64 string) *probe {
	raw, err := base64.StdEncoding.DecodeString(kubeconfigB64)
	if err != nil {
		return &probe{err: fmt.Errorf("decode kubeconfig: %w", err)}
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(raw)
	if err != nil {
		return &probe{err: fmt.Errorf("load kubeconfig: %w", err)}
	}
	if err := routeService(ctx, m.Clients, m.NodeIP, cfg); err != nil {
		return &probe{err: err}
	}
	cfg.Timeout = 5 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return &probe{err: err}
	}
	ver, err := cs.Discovery().ServerVersion()
	if err != nil {
		return &probe{err: fmt.Errorf("get version: %w", err)}
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return &probe{err: fmt.Errorf("list nodes: %w", err)}
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		return &probe{err: fmt.Errorf("get kube-system: %w", err)}
	}
	return &probe{version: ver.GitVersion, nodes: int64(len(nodes.Items)), uid: string(ns.UID)}
}

// routeService plays kube-proxy for the probe: a server address that is a ClusterIP:port of one of
// this cluster's Services is replaced by <node IP>:<targetPort>, keeping the TLS server name.
func routeService(ctx context.Context, cl *Clients, nodeIP string, cfg *rest.Config) error {
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return fmt.Errorf("parse server %q: %w", cfg.Host, err)
	}
	host, portStr, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil
	}
	port, _ := strconv.Atoi(portStr)
	svcs, err := cl.Kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	for _, s := range svcs.Items {
		if s.Spec.ClusterIP != host {
			continue
		}
		for _, p := range s.Spec.Ports {
			if int(p.Port) == port && p.TargetPort.IntValue() > 0 {
				u.Host = net.JoinHostPort(nodeIP, strconv.Itoa(p.TargetPort.IntValue()))
				cfg.Host = u.String()
				if cfg.TLSClientConfig.ServerName == "" {
					cfg.TLSClientConfig.ServerName = host
				}
				return nil
			}
		}
	}
	return nil
}

// SetCondition sets a KubeSphere cluster condition: lastUpdateTime changes only with the status,
// reason or message; lastTransitionTime only with the status.
func SetCondition(c *unstructured.Unstructured, typ, status, reason, message, now string) {
	conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	for i, raw := range conds {
		cond, ok := raw.(map[string]any)
		if !ok || cond["type"] != typ {
			continue
		}
		if cond["status"] == status && cond["reason"] == reason && cond["message"] == message {
			return
		}
		if cond["status"] != status {
			cond["lastTransitionTime"] = now
		}
		cond["status"], cond["reason"], cond["message"], cond["lastUpdateTime"] = status, reason, message, now
		conds[i] = cond
		_ = unstructured.SetNestedSlice(c.Object, conds, "status", "conditions")
		return
	}
	conds = append(conds, map[string]any{"type": typ, "status": status, "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
	_ = unstructured.SetNestedSlice(c.Object, conds, "status", "conditions")
}

func addString(c *unstructured.Unstructured, f string) {
	for _, x := range c.GetFinalizers() {
		if x == f {
			return
		}
	}
	c.SetFinalizers(append(c.GetFinalizers(), f))
}

func removeString(c *unstructured.Unstructured, f string) bool {
	var out []string
	found := false
	for _, x := range c.GetFinalizers() {
		if x == f {
			found = true
			continue
		}
		out = append(out, x)
	}
	c.SetFinalizers(out)
	return found
}

func (m *ControllerManager) routeService(ctx context.Context, cfg *rest.Config) error {
	return routeService(ctx, m.Clients, m.NodeIP, cfg)
}
