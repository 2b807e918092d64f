package installer

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Where the published proxy address came from.
const (
	AddressFromFlag         = "flag"
	AddressFromAnswer       = "answer"
	AddressFromExisting     = "existing"
	AddressFromLoadBalancer = "loadBalancer"
)

// ProxyAddressExample is the format shown in advice.
const ProxyAddressExample = "http://HOST:PORT"

// ValidateProxyAddress checks a proxy publish address and returns it normalised: scheme http or
// https (lower case), a host (IP address or DNS name, not 0.0.0.0), an explicit port 1-65535, no
// path (a lone "/" is dropped), query, fragment or user info. Agents dial exactly this address.
func ValidateProxyAddress(s string) (string, error) {
	raw := strings.TrimSpace(s)
	if raw == "" {
		return "", fmt.Errorf("proxy address is empty: use %s", ProxyAddressExample)
	}
	if !strings.Contains(raw, "://") {
		return "", fmt.Errorf("proxy address %q has no scheme: use %s (or https://)", raw, ProxyAddressExample)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("proxy address %q is not a URL: use %s", raw, ProxyAddressExample)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("proxy address %q: scheme must be http or https, not %q", raw, u.Scheme)
	}
	if u.User != nil {
		return "", fmt.Errorf("proxy address %q must not contain user information", raw)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("proxy address %q must be scheme://host:port without a path or query", raw)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return "", fmt.Errorf("proxy address %q has no host: use %s", raw, ProxyAddressExample)
	}
	if port == "" {
		return "", fmt.Errorf("proxy address %q has no port: use %s (for example the tower Service's NodePort)", raw, ProxyAddressExample)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("proxy address %q: port %q is not in 1-65535", raw, port)
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() {
			return "", fmt.Errorf("proxy address %q: %s is not an address agents can dial", raw, host)
		}
	} else if errs := validation.IsDNS1123Subdomain(strings.ToLower(strings.TrimSuffix(host, "."))); len(errs) > 0 {
		return "", fmt.Errorf("proxy address %q: host %q is neither an IP address nor a DNS name", raw, host)
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(host), port), nil
}

// LoadBalancerAddress returns http://<ingress IP or hostname>:<port> for a Service with a load
// balancer ingress, the way KubeSphere derives the proxy address (IP preferred), or "".
func LoadBalancerAddress(svc *corev1.Service) string {
	if svc == nil || len(svc.Spec.Ports) == 0 {
		return ""
	}
	port := strconv.Itoa(int(svc.Spec.Ports[0].Port))
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" {
			return "http://" + net.JoinHostPort(ing.IP, port)
		}
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.Hostname != "" {
			return "http://" + net.JoinHostPort(ing.Hostname, port)
		}
	}
	return ""
}

// AddressCandidate is an address the proxy is likely reachable on.
type AddressCandidate struct {
	Address string `json:"address"`
	// Source explains it ("node n1 ExternalIP, NodePort 31234").
	Source string `json:"source"`
}

// ComputeCandidates lists addresses agents may use when the tower Service has no load balancer
// address: the Service's externalIPs with its port, then every node's ExternalIP, then every node's
// InternalIP, with the Service's NodePort. Duplicates are dropped; nodes are taken in name order.
func ComputeCandidates(svc *corev1.Service, nodes []corev1.Node) []AddressCandidate {
	if svc == nil || len(svc.Spec.Ports) == 0 {
		return nil
	}
	var out []AddressCandidate
	seen := map[string]bool{}
	add := func(host string, port int32, source string) {
		if host == "" || port == 0 {
			return
		}
		addr := "http://" + net.JoinHostPort(host, strconv.Itoa(int(port)))
		if seen[addr] {
			return
		}
		seen[addr] = true
		out = append(out, AddressCandidate{Address: addr, Source: source})
	}
	sp := svc.Spec.Ports[0]
	for _, ip := range svc.Spec.ExternalIPs {
		add(ip, sp.Port, fmt.Sprintf("Service %s externalIP, port %d", svc.Name, sp.Port))
	}
	sorted := append([]corev1.Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, typ := range []corev1.NodeAddressType{corev1.NodeExternalIP, corev1.NodeInternalIP} {
		for _, n := range sorted {
			for _, a := range n.Status.Addresses {
				if a.Type == typ {
					add(a.Address, sp.NodePort, fmt.Sprintf("node %s %s, NodePort %d", n.Name, typ, sp.NodePort))
				}
			}
		}
	}
	return out
}

// AddressCandidates lists the nodes and computes the candidates for svc. Failing to list nodes
// (RBAC) yields the Service-only candidates and the error.
func AddressCandidates(ctx context.Context, c *Clients, svc *corev1.Service) ([]AddressCandidate, error) {
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return ComputeCandidates(svc, nil), fmt.Errorf("list nodes: %w", err)
	}
	return ComputeCandidates(svc, nodes.Items), nil
}

// CheckProxyHealth sends GET <address>/health (exactly that path: Tower 404s on a query string) and
// expects 200. TLS certificates are not verified: the probe sends nothing secret and the proxy's
// certificate is issued by its own CA, which the agents pin.
func CheckProxyHealth(ctx context.Context, address string, timeout time.Duration) error {
	addr, err := ValidateProxyAddress(address)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr+"/health", nil)
	if err != nil {
		return err
	}
	tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // see above
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: timeout}).Do(req)
	if err != nil {
		return fmt.Errorf("GET %s/health: %w", addr, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s/health: HTTP %d", addr, resp.StatusCode)
	}
	return nil
}

// httpsAddress returns addr with an http:// scheme replaced by https:// (the ks-mc proxy serves TLS
// on the same port); other addresses unchanged.
func httpsAddress(addr string) string {
	if rest, ok := strings.CutPrefix(addr, "http://"); ok {
		return "https://" + rest
	}
	return addr
}
