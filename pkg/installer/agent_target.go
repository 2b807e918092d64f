package installer

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/manifests"
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
		if svc, err := host.Kube.CoreV1().Services(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{}); err == nil {
			addr = LoadBalancerAddress(svc)
		}
	}
	return addr
}

// RenderAgentOptions select what "kubectl ks-mc render agent" renders.
type RenderAgentOptions struct {
	Name       string
	Tunnel     kubesphere.Tunnel
	AgentImage string
	CACertHash string
	// ProxyAddress overrides the host's published address.
	ProxyAddress string
}

// RenderAgentFor renders the agent of an existing Cluster from the host's data (token, proxy
// address, agent image, tunnel). The returned objects hold the token: redact before printing.
func RenderAgentFor(ctx context.Context, host *Clients, o RenderAgentOptions) ([]*unstructured.Unstructured, kubesphere.Tunnel, error) {
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
		return nil, "", fmt.Errorf("cluster %s has no spec.connection.token yet: is the host's proxy running (kubectl -n %s get deployment %s%s)?", o.Name, kubesphere.Namespace, kubesphere.TowerName, host.contextFlag())
	}
	cc, err := GetClusterConfiguration(ctx, host)
	if err != nil {
		return nil, "", err
	}
	cfg, err := GetKubeSphereConfig(ctx, host)
	if err != nil {
		return nil, "", err
	}
	t, terr := resolveAgentTarget(ctx, host, cc, cfg, agentWants{
		ProxyAddress: o.ProxyAddress, Tunnel: o.Tunnel, AgentImage: o.AgentImage, CACertHash: o.CACertHash,
	})
	if terr != nil {
		switch terr.Step {
		case targetAddress:
			return nil, "", fmt.Errorf("the host has no proxy address: %s (or pass --proxy-address)", initHostHint(host))
		case targetPlaintext:
			return nil, "", fmt.Errorf("%w: %s", terr.Err, PlaintextAgentAdvice(host, t.Address))
		case targetPin:
			return nil, "", fmt.Errorf("%w (or pass --ca-cert-hash)", terr.Err)
		}
		return nil, "", terr.Err
	}
	v := manifests.AgentValues{ClusterName: o.Name, Token: token, ProxyServer: t.Address, Image: t.Image, CACertHash: t.CACertHash}
	if name := c.GetAnnotations()[kubesphere.AgentDeploymentAnnotation]; t.Tunnel == kubesphere.TunnelKsMc && name == kubesphere.MigratedAgentName {
		// A member moved by migrate keeps its ks-mc agent in the Deployment it was migrated to.
		v.DeploymentName = name
	}
	objs, err := manifests.RenderAgent(t.Tunnel, v)
	return objs, t.Tunnel, err
}

// agentWants is what the caller asks of an agent; empty fields are resolved from the host.
type agentWants struct {
	ProxyAddress, AgentImage, CACertHash string
	Tunnel                               kubesphere.Tunnel
	// Strict (join): the address must be valid, Deployment tower must exist, and the tunnel asked
	// for must be the one the host runs. Render is lenient: it renders what was asked.
	Strict bool
}

// agentTarget is where an agent connects and what it runs.
type agentTarget struct {
	// Address is the proxy address the agent dials (normalised when Strict).
	Address string
	// Tunnel is the agent's tunnel; HostTunnel what Deployment tower runs.
	Tunnel, HostTunnel kubesphere.Tunnel
	// Tower is the host's Deployment tower (nil when absent and not Strict).
	Tower *appsv1.Deployment
	Image string
	// CACertHash pins the bundled proxy's CA (https addresses); PinnedFromHost when it was read
	// from the host rather than given.
	CACertHash     string
	PinnedFromHost bool
}

// targetStep names the step of resolveAgentTarget that failed, so each caller words its own advice.
type targetStep int

const (
	// targetAddress: no address (Err nil), or Strict and the address is invalid.
	targetAddress targetStep = iota
	// targetTower: Deployment tower cannot be read (Strict: or does not exist).
	targetTower
	// targetTunnel: Strict and the tunnel asked for is not the host's.
	targetTunnel
	// targetPlaintext: a ks-mc agent over http:// that the host's proxy refuses.
	targetPlaintext
	// targetPin: the https proxy's CA cannot be pinned.
	targetPin
)

type targetError struct {
	Step targetStep
	Err  error
}

// resolveAgentTarget is the one place that decides an agent's address, tunnel, CA pin and image
// (join's preflight and render agent). On error the target holds what was resolved before the
// failed step.
func resolveAgentTarget(ctx context.Context, host *Clients, cc *ClusterConfiguration, cfg *KubeSphereConfig, w agentWants) (agentTarget, *targetError) {
	var t agentTarget
	// Proxy address: KubeSphere's own rule (proxyPublishAddress, else the tower Service's LB).
	t.Address = w.ProxyAddress
	if t.Address == "" {
		t.Address = HostProxyAddress(ctx, host, cc, cfg)
	}
	if t.Address == "" {
		return t, &targetError{Step: targetAddress}
	}
	if w.Strict {
		norm, err := ValidateProxyAddress(t.Address)
		if err != nil {
			return t, &targetError{Step: targetAddress, Err: err}
		}
		t.Address = norm
	}
	tower, err := host.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err) && w.Strict:
		return t, &targetError{Step: targetTower, Err: err}
	case apierrors.IsNotFound(err):
	case err != nil:
		return t, &targetError{Step: targetTower, Err: fmt.Errorf("get deployment %s/%s: %w", kubesphere.Namespace, kubesphere.TowerName, err)}
	default:
		t.Tower = tower
	}
	t.HostTunnel = kubesphere.TunnelTower
	if TunnelOf(t.Tower) == kubesphere.TunnelKsMc {
		t.HostTunnel = kubesphere.TunnelKsMc
	}
	t.Tunnel = w.Tunnel
	if t.Tunnel == "" || t.Tunnel == kubesphere.TunnelAuto {
		t.Tunnel = t.HostTunnel
	}
	if w.Strict && t.Tunnel != t.HostTunnel {
		return t, &targetError{Step: targetTunnel, Err: fmt.Errorf("the host runs the %s proxy, not %s", t.HostTunnel, t.Tunnel)}
	}
	t.Image = w.AgentImage
	if t.Image == "" && t.Tunnel == kubesphere.TunnelTower {
		t.Image = cfg.Multicluster.AgentImage
	}
	if err := PlaintextAgentRefused(t.Tunnel, t.Address, t.Tower); err != nil {
		return t, &targetError{Step: targetPlaintext, Err: err}
	}
	t.CACertHash = w.CACertHash
	if t.CACertHash == "" && t.Tunnel == kubesphere.TunnelKsMc && strings.HasPrefix(t.Address, "https://") {
		pin, err := ProxyCACertHash(ctx, host)
		if err != nil {
			return t, &targetError{Step: targetPin, Err: err}
		}
		t.CACertHash, t.PinnedFromHost = pin, true
	}
	return t, nil
}

// PlaintextAgentRefused: a ks-mc agent must not hand its token to an http:// proxy address (anyone
// on the path could pose as the proxy and act with the agent's cluster-admin identity), and the
// ks-mc proxy refuses plaintext agents unless init-host rendered it with --allow-plaintext-agents.
// The host's consent is read from the tower Deployment's arguments.
func PlaintextAgentRefused(tun kubesphere.Tunnel, addr string, tower *appsv1.Deployment) error {
	if tun != kubesphere.TunnelKsMc || !strings.HasPrefix(addr, "http://") || manifests.ProxyAllowsPlaintextAgents(tower) {
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
	s, err := host.Kube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.CASecretName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read the proxy CA (Secret %s/%s): %w", kubesphere.Namespace, kubesphere.CASecretName, err)
	}
	block, _ := pem.Decode(s.Data[corev1.TLSCertKey])
	if block == nil {
		return "", fmt.Errorf("Secret %s/%s has no PEM certificate in %s", kubesphere.Namespace, kubesphere.CASecretName, corev1.TLSCertKey)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("Secret %s/%s: parse the CA certificate: %w", kubesphere.Namespace, kubesphere.CASecretName, err)
	}
	return kubesphere.CACertHash(cert), nil
}
