package sandbox

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// WriteTunnelKubeconfig reads the kubeconfig that the proxy wrote into Cluster <name> on the host
// and writes it to path with the server rewritten the way kube-proxy would route it: from
// https://<ClusterIP of mc-NAME>:6443 to https://<host node IP>:<kubernetesAPIServerPort>, with the
// ClusterIP kept as TLS server name. Requests with it go through the tunnel to the member.
func (s *Sandbox) WriteTunnelKubeconfig(ctx context.Context, host *Cluster, name, path string) error {
	cfg, err := host.RESTConfig()
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	obj, err := dyn.Resource(fakeks.ClusterGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get Cluster %s on %s: %w", name, host.Name, err)
	}
	b64, _, _ := unstructured.NestedString(obj.Object, "spec", "connection", "kubeconfig")
	if b64 == "" {
		return fmt.Errorf("cluster %s has no spec.connection.kubeconfig yet (no agent connected)", name)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Errorf("decode kubeconfig of cluster %s: %w", name, err)
	}
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return fmt.Errorf("parse kubeconfig of cluster %s: %w", name, err)
	}
	port, _, _ := unstructured.NestedInt64(obj.Object, "spec", "connection", "kubernetesAPIServerPort")
	if port == 0 {
		return fmt.Errorf("cluster %s has no kubernetesAPIServerPort", name)
	}
	for _, c := range kc.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil {
			return fmt.Errorf("parse server %q: %w", c.Server, err)
		}
		if c.TLSServerName == "" {
			c.TLSServerName = u.Hostname()
		}
		u.Host = net.JoinHostPort(host.NodeIP, strconv.FormatInt(port, 10))
		c.Server = u.String()
	}
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}
