package installer

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/manifests"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// HostProxyAddress resolves the address agents dial, KubeSphere's way: multicluster.proxyPublishAddress
// (kubesphere-config, else the ClusterConfiguration), else the tower Service's load balancer
// address. "" when there is none.
func HostProxyAddress(ctx context.Context, host *Clients, cc *ClusterConfiguration, cfg *KubeSphereConfig) string {
	addr := ""
	if cfg != nil {
		addr = cfg.Multicluster.ProxyPublishAddress
	}
	if addr == "" && cc != nil {
		addr = cc.ProxyPublishAddress()
	}
	if addr == "" {
		if svc, err := host.Kube.CoreV1().Services(KubeSphereNamespace).Get(ctx, TowerName, metav1.GetOptions{}); err == nil {
			addr = LoadBalancerAddress(svc)
		}
	}
	return addr
}

// RenderAgentOptions select what "kubectl ks-mc render agent" renders.
type RenderAgentOptions struct {
	Name       string
	Tunnel     manifests.Tunnel
	AgentImage string
	CACertHash string
	// ProxyAddress overrides the host's published address.
	ProxyAddress string
}

// RenderAgentFor renders the agent of an existing Cluster from the host's data (token, proxy
// address, agent image, tunnel). The returned objects hold the token: redact before printing.
func RenderAgentFor(ctx context.Context, host *Clients, o RenderAgentOptions) ([]*unstructured.Unstructured, manifests.Tunnel, error) {
	if err := manifests.ValidateClusterName(o.Name); err != nil {
		return nil, "", err
	}
	c, err := GetCluster(ctx, host, o.Name)
	if err != nil {
		return nil, "", err
	}
	if c == nil {
		return nil, "", fmt.Errorf("cluster %s does not exist on the host: create it with kubectl ks-mc join%s (or --dry-run to see it)", o.Name, host.contextFlag())
	}
	token, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
	if token == "" {
		return nil, "", fmt.Errorf("cluster %s has no spec.connection.token yet: is the host's proxy running (kubectl -n %s get deployment %s%s)?", o.Name, KubeSphereNamespace, TowerName, host.contextFlag())
	}
	cc, err := GetClusterConfiguration(ctx, host)
	if err != nil {
		return nil, "", err
	}
	cfg, err := GetKubeSphereConfig(ctx, host)
	if err != nil {
		return nil, "", err
	}
	addr := o.ProxyAddress
	if addr == "" {
		addr = HostProxyAddress(ctx, host, cc, cfg)
	}
	if addr == "" {
		return nil, "", fmt.Errorf("the host has no proxy address: %s (or pass --proxy-address)", initHostHint(host))
	}
	tower, err := host.Kube.AppsV1().Deployments(KubeSphereNamespace).Get(ctx, TowerName, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("get deployment %s/%s: %w", KubeSphereNamespace, TowerName, err)
	}
	if err != nil {
		tower = nil
	}
	tun := o.Tunnel
	if tun == "" || tun == manifests.TunnelAuto {
		tun = manifests.TunnelTower
		if TunnelOf(tower) == TunnelKsMc {
			tun = manifests.TunnelKSMC
		}
	}
	if err := PlaintextAgentRefused(tun, addr, tower); err != nil {
		return nil, "", fmt.Errorf("%w: %s", err, PlaintextAgentAdvice(host, addr))
	}
	pin := o.CACertHash
	if pin == "" && tun == manifests.TunnelKSMC && strings.HasPrefix(addr, "https://") {
		if pin, err = ProxyCACertHash(ctx, host); err != nil {
			return nil, "", fmt.Errorf("%w (or pass --ca-cert-hash)", err)
		}
	}
	image := o.AgentImage
	if image == "" && tun == manifests.TunnelTower {
		image = cfg.Multicluster.AgentImage
	}
	v := manifests.AgentValues{ClusterName: o.Name, Token: token, ProxyServer: addr, Image: image, CACertHash: pin}
	if name := c.GetAnnotations()[manifests.AgentDeploymentAnnotation]; tun == manifests.TunnelKSMC && name == manifests.MigratedAgentName {
		// A member moved by migrate keeps its ks-mc agent in the Deployment it was migrated to.
		v.DeploymentName = name
	}
	objs, err := manifests.RenderAgent(tun, v)
	return objs, tun, err
}

// PlaintextAgentRefused: a ks-mc agent must not hand its token to an http:// proxy address (anyone
// on the path could pose as the proxy and act with the agent's cluster-admin identity), and the
// ks-mc proxy refuses plaintext agents unless init-host rendered it with --allow-plaintext-agents.
// The host's consent is read from the tower Deployment's arguments.
func PlaintextAgentRefused(tun manifests.Tunnel, addr string, tower *appsv1.Deployment) error {
	if tun != manifests.TunnelKSMC || !strings.HasPrefix(addr, "http://") || manifests.ProxyAllowsPlaintextAgents(tower) {
		return nil
	}
	return fmt.Errorf("the proxy address %s is plain http, and the host's ks-mc proxy refuses agents without TLS (the token would travel in clear text)", addr)
}

// PlaintextAgentAdvice says how to fix a refused plaintext address on the host.
func PlaintextAgentAdvice(host *Clients, addr string) string {
	return fmt.Sprintf("publish https on the host: kubectl ks-mc init-host%s --tunnel=ks-mc --proxy-publish-address %s (the proxy serves TLS on the same port; join pins its CA); "+
		"or, to accept agents over plain http, re-run that init-host with --allow-plaintext-agents and the http address", host.contextFlag(), httpsAddress(addr))
}

// ProxyCACertHash reads the pin of the bundled proxy's CA from its Secret on the host
// (kubesphere-system/ks-mc-proxy-ca, created by the proxy on first start): the sha256 of the CA
// certificate's public key, computed from the certificate itself.
func ProxyCACertHash(ctx context.Context, host *Clients) (string, error) {
	s, err := host.Kube.CoreV1().Secrets(KubeSphereNamespace).Get(ctx, tunnel.DefaultCASecretName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read the proxy CA (Secret %s/%s): %w", KubeSphereNamespace, tunnel.DefaultCASecretName, err)
	}
	block, _ := pem.Decode(s.Data[corev1.TLSCertKey])
	if block == nil {
		return "", fmt.Errorf("Secret %s/%s has no PEM certificate in %s", KubeSphereNamespace, tunnel.DefaultCASecretName, corev1.TLSCertKey)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("Secret %s/%s: parse the CA certificate: %w", KubeSphereNamespace, tunnel.DefaultCASecretName, err)
	}
	return tunnel.CACertHash(cert), nil
}
