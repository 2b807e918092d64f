package kube

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

func serviceLabels(name string) map[string]string {
	return map[string]string{"app": kubesphere.ServicePrefix + name, "app.kubernetes.io/name": kubesphere.ServicePrefix + name,
		kubesphere.ManagedByLabel: kubesphere.ManagedByValue}
}

func (c *Controller) reconcile(ctx context.Context, name string) error {
	_, cl, err := c.cluster(name)
	if err != nil {
		return err
	}
	if cl == nil || !cl.Served() {
		return c.teardown(ctx, name)
	}
	port, err := c.allocatePort(cl)
	if err != nil {
		return err
	}
	clusterIP, err := c.applyService(ctx, name, port)
	if err != nil {
		return err
	}
	c.mu.Lock()
	proxy := c.proxy
	c.mu.Unlock()
	agents := 0
	if proxy != nil {
		agents = proxy.Agents(name)
	}
	if agents > 0 {
		if err := c.ensureListener(name, port, clusterIP); err != nil {
			return err
		}
	} else {
		c.stopListener(name)
	}
	connected := agents > 0
	now := time.Now()
	c.mu.Lock()
	r, wasRefused := c.refused[name]
	c.mu.Unlock()
	if wasRefused && r.connected == connected && now.Before(r.until) {
		// The same update was refused moments ago: no hot loop, try again when the backoff ends.
		c.queue.AddAfter(name, r.until.Sub(now))
		return nil
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		return c.updateCluster(ctx, name, port, clusterIP, connected)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil || ctx.Err() != nil {
		if wasRefused && err == nil {
			delete(c.refused, name)
			c.log.Info("Cluster update admitted again", "cluster", name, "agentAvailable", connected)
		}
		return err
	}
	delay := refusedMinDelay
	if wasRefused && r.connected == connected {
		delay = min(2*r.delay, refusedMaxDelay)
	}
	c.refused[name] = refusal{connected: connected, delay: delay, until: now.Add(delay)}
	c.queue.AddAfter(name, delay)
	if !wasRefused || r.connected != connected || delay < refusedMaxDelay {
		c.log.Info("Cluster update refused, retrying with backoff (KubeSphere 3.4's webhook refuses every update while it cannot reach the member)",
			"cluster", name, "agentAvailable", connected, "retryIn", delay.String(), "error", err.Error())
	}
	return nil
}

// Refused reports whether the last update of cluster was refused and when it is retried.
func (c *Controller) Refused(cluster string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.refused[cluster]
	return r.until, ok
}

// updateCluster writes ports, token, endpoints, kubeconfig and conditions (Update, no status
// subresource), only when something changed.
func (c *Controller) updateCluster(ctx context.Context, name string, port int, clusterIP string, connected bool) error {
	api := c.cfg.Dynamic.Resource(kubesphere.ClusterGVR)
	u, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get Cluster %s: %w", name, err)
	}
	cl, err := ClusterFromUnstructured(u)
	if err != nil {
		return err
	}
	if !cl.Served() {
		return nil
	}
	before := u.DeepCopy()
	conn := func(v any, field string) error {
		return unstructured.SetNestedField(u.Object, v, "spec", "connection", field)
	}
	kubeEP := "https://" + net.JoinHostPort(clusterIP, "6443")
	ksEP := "http://" + net.JoinHostPort(clusterIP, "80")
	for _, set := range []struct {
		f string
		v any
	}{
		{"kubernetesAPIServerPort", int64(port)},
		{"kubesphereAPIServerPort", int64(port + KubeSpherePortOffset)},
		{"kubernetesAPIEndpoint", kubeEP},
		{"kubesphereAPIEndpoint", ksEP},
	} {
		if err := conn(set.v, set.f); err != nil {
			return err
		}
	}
	if cl.Spec.Connection.Token == "" {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		if err := conn(hex.EncodeToString(b[:]), "token"); err != nil {
			return err
		}
	}
	now := time.Now()
	if _, err := setCondition(u, kubesphere.ConditionInitialized, "True", "Initialized", kubesphere.MessageInitialized, now); err != nil {
		return err
	}
	if connected {
		kc, fresh, err := c.kubeconfig(name, kubeEP, cl.Spec.Connection.KubeConfig)
		if err != nil {
			return err
		}
		if fresh {
			if err := conn(base64.StdEncoding.EncodeToString(kc), "kubeconfig"); err != nil {
				return err
			}
		}
		_, err = setCondition(u, kubesphere.ConditionAgentAvailable, "True", "AgentConnected", kubesphere.MessageAgentConnected, now)
		if err != nil {
			return err
		}
	} else if _, err := setCondition(u, kubesphere.ConditionAgentAvailable, "False", "AgentDisconnected", kubesphere.MessageAgentDisconnected, now); err != nil {
		return err
	}
	if equality.Semantic.DeepEqual(before.Object, u.Object) {
		return nil
	}
	if _, err := api.Update(ctx, u, metav1.UpdateOptions{FieldManager: kubesphere.FieldManager}); err != nil {
		return fmt.Errorf("update Cluster %s: %w", name, err)
	}
	c.log.V(1).Info("updated Cluster", "cluster", name, "port", port, "agentAvailable", connected)
	return nil
}

// kubeconfig returns the existing kubeconfig when it still points at endpoint, trusts this CA and
// holds a client certificate of this CA with more than a third of its validity left; otherwise a
// new one (fresh = true).
func (c *Controller) kubeconfig(name, endpoint string, existing []byte) ([]byte, bool, error) {
	if len(existing) > 0 && c.kubeconfigValid(name, endpoint, existing) {
		return existing, false, nil
	}
	certPEM, keyPEM, err := c.cfg.CA.IssueClusterClient(name, AdminUser, []string{"system:masters"}, tunnel.ClientValidity)
	if err != nil {
		return nil, false, fmt.Errorf("issue client certificate for cluster %s: %w", name, err)
	}
	cfg := clientcmdapi.NewConfig()
	ctxName := AdminUser + "@" + name
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: endpoint, CertificateAuthorityData: c.cfg.CA.CertPEM}
	cfg.AuthInfos[AdminUser] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[ctxName] = &clientcmdapi.Context{Cluster: name, AuthInfo: AdminUser}
	cfg.CurrentContext = ctxName
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, false, fmt.Errorf("encode kubeconfig for cluster %s: %w", name, err)
	}
	return b, true, nil
}

func (c *Controller) kubeconfigValid(name, endpoint string, raw []byte) bool {
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		return false
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil || cfg.AuthInfos[ctx.AuthInfo] == nil {
		return false
	}
	cluster, user := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	if cluster.Server != endpoint || !bytes.Equal(bytes.TrimSpace(cluster.CertificateAuthorityData), bytes.TrimSpace(c.cfg.CA.CertPEM)) {
		return false
	}
	block, _ := pem.Decode(user.ClientCertificateData)
	if block == nil {
		return false
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return false
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: c.cfg.CA.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return false
	}
	if !tunnel.BoundToCluster(cert, name) {
		return false // issued before certificates were bound to their cluster, or for another one
	}
	return time.Until(cert.NotAfter) > tunnel.ClientValidity/3
}

// allocatePort keeps the Cluster's port when it is in range and not taken by an older Cluster,
// else reserves the lowest free port. Reservations are held under c.mu, so two reconciles never
// hand out the same port.
func (c *Controller) allocatePort(cl *Cluster) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	used := map[int]bool{}
	want := int(cl.Spec.Connection.KubernetesAPIServerPort)
	for _, obj := range c.informer.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok || u.GetName() == cl.Name {
			continue
		}
		o, err := ClusterFromUnstructured(u)
		if err != nil || !o.Served() {
			continue
		}
		p := int(o.Spec.Connection.KubernetesAPIServerPort)
		if p == want && !older(cl, o) {
			want = 0 // a duplicate (Tower could hand them out): the older Cluster keeps the port
		}
		used[p] = true
	}
	for n, p := range c.ports {
		if n != cl.Name {
			if p == want {
				want = 0
			}
			used[p] = true
		}
	}
	if want >= c.cfg.PortMin && want <= c.cfg.PortMax {
		c.ports[cl.Name] = want
		return want, nil
	}
	for p := c.cfg.PortMin; p <= c.cfg.PortMax; p++ {
		if !used[p] {
			c.ports[cl.Name] = p
			return p, nil
		}
	}
	return 0, fmt.Errorf("cluster %s: no free port in %d-%d", cl.Name, c.cfg.PortMin, c.cfg.PortMax)
}

func older(a, b *Cluster) bool {
	ta, tb := a.CreationTimestamp.Time, b.CreationTimestamp.Time
	if !ta.Equal(tb) {
		return ta.Before(tb)
	}
	return a.Name < b.Name
}

// applyService server-side applies Service mc-<name> and returns its ClusterIP.
func (c *Controller) applyService(ctx context.Context, name string, port int) (string, error) {
	svc := corev1ac.Service(kubesphere.ServicePrefix+name, c.cfg.Namespace).
		WithLabels(serviceLabels(name)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithSelector(map[string]string{"app": "tower", "app.kubernetes.io/name": "tower"}).
			WithPorts(
				corev1ac.ServicePort().WithName("kubernetes").WithProtocol(corev1.ProtocolTCP).
					WithPort(6443).WithTargetPort(intstr.FromInt32(int32(port))),
				corev1ac.ServicePort().WithName("kubesphere").WithProtocol(corev1.ProtocolTCP).
					WithPort(80).WithTargetPort(intstr.FromInt32(int32(port+KubeSpherePortOffset))),
			))
	out, err := c.cfg.Kube.CoreV1().Services(c.cfg.Namespace).Apply(ctx, svc, metav1.ApplyOptions{FieldManager: kubesphere.FieldManager, Force: true})
	if err != nil {
		return "", fmt.Errorf("apply Service %s/%s%s: %w", c.cfg.Namespace, kubesphere.ServicePrefix, name, err)
	}
	ip := out.Spec.ClusterIP
	if ip == "" || ip == corev1.ClusterIPNone {
		return "", fmt.Errorf("service %s/%s%s has no ClusterIP yet", c.cfg.Namespace, kubesphere.ServicePrefix, name)
	}
	return ip, nil
}

func (c *Controller) ensureListener(name string, port int, clusterIP string) error {
	c.mu.Lock()
	cur := c.listeners[name]
	proxy := c.proxy
	c.mu.Unlock()
	if cur != nil && cur.port == port && cur.clusterIP == clusterIP {
		return nil
	}
	if cur != nil {
		c.stopListener(name)
	}
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	for _, s := range []string{clusterIP, c.cfg.BindAddress} {
		if ip := net.ParseIP(s); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
		kubesphere.ServicePrefix + name + "." + c.cfg.Namespace + ".svc", "localhost"}
	rc, err := tunnel.NewRenewingCert(c.cfg.CA, "kubernetes", dns, ips, tunnel.ServingValidity)
	if err != nil {
		return err
	}
	l, err := tunnel.ListenCluster(tunnel.ClusterListenerConfig{
		Cluster: name, BindAddress: c.cfg.BindAddress, KubePort: port, KubeSpherePort: port + KubeSpherePortOffset,
		TLS: rc.ServerTLS(c.cfg.CA.Pool()), Dialer: proxy, HandshakeTimeout: c.cfg.HandshakeTimeout, Logger: c.log,
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.listeners[name] = &servedCluster{l: l, port: port, clusterIP: clusterIP}
	c.mu.Unlock()
	c.log.Info("serving cluster", "cluster", name, "kube", l.KubeAddr().String(), "kubesphere", l.KubeSphereAddr().String())
	return nil
}

func (c *Controller) stopListener(name string) {
	c.mu.Lock()
	cur := c.listeners[name]
	delete(c.listeners, name)
	c.mu.Unlock()
	if cur != nil {
		_ = cur.l.Close()
		c.log.Info("stopped serving cluster", "cluster", name)
	}
}

// teardown removes what the proxy made for a Cluster that is gone or no longer served.
func (c *Controller) teardown(ctx context.Context, name string) error {
	c.stopListener(name)
	c.mu.Lock()
	delete(c.ports, name)
	delete(c.refused, name)
	c.mu.Unlock()
	err := c.cfg.Kube.CoreV1().Services(c.cfg.Namespace).Delete(ctx, kubesphere.ServicePrefix+name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Service %s/%s%s: %w", c.cfg.Namespace, kubesphere.ServicePrefix, name, err)
	}
	if err == nil {
		c.log.Info("removed Service of a Cluster no longer served", "cluster", name)
	}
	return nil
}

// removeOrphans deletes ks-mc's mc-<name> Services whose Cluster is gone (deleted while the proxy
// was down).
func (c *Controller) removeOrphans(ctx context.Context) error {
	list, err := c.cfg.Kube.CoreV1().Services(c.cfg.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: kubesphere.ManagedByLabel + "=" + kubesphere.ManagedByValue})
	if err != nil {
		return err
	}
	for _, s := range list.Items {
		name, ok := strings.CutPrefix(s.Name, kubesphere.ServicePrefix)
		if !ok || s.Labels["app"] != s.Name {
			continue
		}
		if _, cl, _ := c.cluster(name); cl == nil || !cl.Served() {
			c.queue.Add(name)
		}
	}
	return nil
}
