package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

func clusterObj(name, connType string, port int64, token string, created time.Time) *unstructured.Unstructured {
	conn := map[string]any{"type": connType}
	if port != 0 {
		conn["kubernetesAPIServerPort"] = port
	}
	if token != "" {
		conn["token"] = token
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster",
		"metadata": map[string]any{"name": name, "creationTimestamp": created.UTC().Format(time.RFC3339)},
		"spec": map[string]any{"joinFederation": true, "provider": "kubesphere", "connection": conn,
			"externalKubeAPIEnabled": false}, // a field the typed view does not know must survive
		"status": map[string]any{"configz": map[string]any{"monitoring": true}},
	}}
	return u
}

func serviceWithIP(name, ip string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: kubesphere.ServicePrefix + name, Namespace: "kubesphere-system"},
		Spec: corev1.ServiceSpec{ClusterIP: ip}}
}

type ctrlEnv struct {
	t    *testing.T
	ctrl *Controller
	dyn  *dynamicfake.FakeDynamicClient
	kube *fake.Clientset
	ca   *tunnel.CA
}

func (e *ctrlEnv) get(name string) *Cluster {
	u, err := e.dyn.Resource(kubesphere.ClusterGVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := ClusterFromUnstructured(u)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func cond(c *Cluster, typ string) *kubesphere.ClusterCondition {
	for i := range c.Status.Conditions {
		if c.Status.Conditions[i].Type == typ {
			return &c.Status.Conditions[i]
		}
	}
	return nil
}

func TestController(t *testing.T) {
	h := newHarness(t, "tcp")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", h.logs.all())
		}
	})
	old := time.Now().Add(-time.Hour)
	preset := "preset-token-kept"
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterGVR: "ClusterList"},
		clusterObj("member1", "proxy", 0, testToken, old),
		clusterObj("member2", "proxy", 0, "", old.Add(time.Minute)),
		clusterObj("dup", "proxy", 0, preset, old.Add(2*time.Minute)),
		clusterObj("direct1", "direct", 0, "", old))
	kube := fake.NewClientset(serviceWithIP("member1", "10.96.0.11"), serviceWithIP("member2", "10.96.0.12"),
		serviceWithIP("dup", "10.96.0.13"), serviceWithIP("gone", "10.96.0.14"))
	// An orphan Service of a Cluster deleted while the proxy was down.
	orphan, _ := kube.CoreV1().Services("kubesphere-system").Get(context.Background(), "mc-gone", metav1.GetOptions{})
	orphan.Labels = serviceLabels("gone")
	_, _ = kube.CoreV1().Services("kubesphere-system").Update(context.Background(), orphan, metav1.UpdateOptions{})

	log := h.logs.logger()
	cc := DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA, cc.BindAddress, cc.Logger = dyn, kube, h.ca, "127.0.0.1", &log
	// A free range on this machine: ports 6000-7000 may be taken by other tests.
	base := freePortBase(t)
	cc.PortMin, cc.PortMax = base, base+20
	ctrl, err := NewController(cc)
	if err != nil {
		t.Fatal(err)
	}
	h.auth = nil
	e := &ctrlEnv{t: t, ctrl: ctrl, dyn: dyn, kube: kube, ca: h.ca}
	p := h.startWith(ctrl)
	ctrl.SetProxy(p)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ctrl.Close() })
	go func() { _ = ctrl.Run(ctx, 2) }()

	// Initialization: ports, token, endpoints, Service, conditions.
	waitFor(t, "clusters initialized", func() bool {
		for _, n := range []string{"member1", "member2", "dup"} {
			if c := cond(e.get(n), kubesphere.ConditionInitialized); c == nil || c.Status != "True" {
				return false
			}
		}
		return true
	})
	ports := map[int32]string{}
	for _, n := range []string{"member1", "member2", "dup"} {
		c := e.get(n)
		cn := c.Spec.Connection
		if cn.KubernetesAPIServerPort < int32(cc.PortMin) || cn.KubernetesAPIServerPort > int32(cc.PortMax) ||
			cn.KubeSphereAPIServerPort != cn.KubernetesAPIServerPort+KubeSpherePortOffset {
			t.Fatalf("%s: ports %d/%d", n, cn.KubernetesAPIServerPort, cn.KubeSphereAPIServerPort)
		}
		if other, dup := ports[cn.KubernetesAPIServerPort]; dup {
			t.Fatalf("%s and %s share port %d", n, other, cn.KubernetesAPIServerPort)
		}
		ports[cn.KubernetesAPIServerPort] = n
		svc, err := kube.CoreV1().Services("kubesphere-system").Get(ctx, "mc-"+n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := "https://" + svc.Spec.ClusterIP + ":6443"; cn.KubernetesAPIEndpoint != want {
			t.Fatalf("%s: endpoint %q, want %q", n, cn.KubernetesAPIEndpoint, want)
		}
		if cn.KubeSphereAPIEndpoint != "http://"+svc.Spec.ClusterIP+":80" {
			t.Fatalf("%s: ks endpoint %q", n, cn.KubeSphereAPIEndpoint)
		}
		if svc.Labels["app"] != "mc-"+n || svc.Labels["app.kubernetes.io/name"] != "mc-"+n ||
			svc.Spec.Selector["app"] != "tower" || svc.Spec.Selector["app.kubernetes.io/name"] != "tower" {
			t.Fatalf("%s: service labels %v selector %v", n, svc.Labels, svc.Spec.Selector)
		}
		if len(svc.Spec.Ports) != 2 || svc.Spec.Ports[0].Port != 6443 || svc.Spec.Ports[0].TargetPort.IntVal != cn.KubernetesAPIServerPort ||
			svc.Spec.Ports[1].Port != 80 || svc.Spec.Ports[1].TargetPort.IntVal != cn.KubeSphereAPIServerPort {
			t.Fatalf("%s: service ports %+v", n, svc.Spec.Ports)
		}
		if a := cond(c, kubesphere.ConditionAgentAvailable); a == nil || a.Status != "False" || a.Message != kubesphere.MessageAgentDisconnected {
			t.Fatalf("%s: AgentAvailable %+v", n, a)
		}
	}
	if tok := e.get("member2").Spec.Connection.Token; !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(tok) {
		t.Fatal("generated token is not 64 hex digits")
	}
	if e.get("dup").Spec.Connection.Token != preset || e.get("member1").Spec.Connection.Token != testToken {
		t.Fatal("a preset token was replaced")
	}
	u, _ := dyn.Resource(kubesphere.ClusterGVR).Get(ctx, "member1", metav1.GetOptions{})
	if v, _, _ := unstructured.NestedBool(u.Object, "status", "configz", "monitoring"); !v {
		t.Fatal("unknown status fields were dropped")
	}
	// The orphan's removal is queued at start and may still be in flight: wait for it.
	waitFor(t, "orphan Service mc-gone removed", func() bool {
		_, err := kube.CoreV1().Services("kubesphere-system").Get(ctx, "mc-gone", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if _, err := kube.CoreV1().Services("kubesphere-system").Get(ctx, "mc-direct1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("Service created for a direct cluster: %v", err)
	}

	// Authentication against the Clusters.
	if err := ctrl.Authenticate("member1", testToken); err != nil {
		t.Fatal(err)
	}
	if err := ctrl.Authenticate("member1", "nope"); !errors.Is(err, tunnel.ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	if err := ctrl.Authenticate("direct1", ""); !errors.Is(err, tunnel.ErrUnknownCluster) {
		t.Fatalf("direct cluster: %v", err)
	}

	// An agent connects: listeners, kubeconfig, AgentAvailable=True.
	agent := h.startAgent(agentOpts{})
	waitFor(t, "AgentAvailable=True", func() bool {
		c := cond(e.get("member1"), kubesphere.ConditionAgentAvailable)
		return c != nil && c.Status == "True" && c.Message == kubesphere.MessageAgentConnected
	})
	c1 := e.get("member1")
	kc, err := clientcmd.Load(c1.Spec.Connection.KubeConfig)
	if err != nil {
		t.Fatal(err)
	}
	kctx := kc.Contexts[kc.CurrentContext]
	if kc.Clusters[kctx.Cluster].Server != c1.Spec.Connection.KubernetesAPIEndpoint {
		t.Fatalf("kubeconfig server %q", kc.Clusters[kctx.Cluster].Server)
	}
	blk, _ := pem.Decode(kc.AuthInfos[kctx.AuthInfo].ClientCertificateData)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || cert.Subject.CommonName != "kubernetes-admin" || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "system:masters" {
		t.Fatalf("client cert %v %v", cert.Subject, err)
	}
	// The kubeconfig works against the listener (reached on 127.0.0.1, server name = ClusterIP,
	// as the sandbox does it).
	rc, err := clientcmd.RESTConfigFromKubeConfig(c1.Spec.Connection.KubeConfig)
	if err != nil {
		t.Fatal(err)
	}
	addr := ctrl.ListenerAddr("member1")
	if addr == nil {
		t.Fatal("no listener")
	}
	rc.Host = "https://" + addr.String()
	rc.TLSClientConfig.ServerName = "10.96.0.11"
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(rc.Host + "/api/v1/namespaces/default")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Identity") != "agent" {
		t.Fatalf("through the Cluster kubeconfig: %d %s identity %q", resp.StatusCode, body, resp.Header.Get("X-Identity"))
	}
	// A client certificate of another CA never gains the agent's credentials: the client does not
	// offer it (the listener names its CA) or the handshake fails; without a token → 401.
	other, _ := tunnel.NewCA("other")
	oc, ok, _ := other.IssueClient("kubernetes-admin", []string{"system:masters"}, time.Hour)
	pair, _ := tls.X509KeyPair(oc, ok)
	for _, cfg := range []*tls.Config{
		{RootCAs: h.ca.Pool(), ServerName: "10.96.0.11", Certificates: []tls.Certificate{pair}},
		{RootCAs: h.ca.Pool(), ServerName: "10.96.0.11", GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }},
	} {
		bad := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := bad.Get(rc.Host + "/api/v1/namespaces/default")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("foreign client certificate: %d", resp.StatusCode)
			}
		}
	}
	// The kubeconfig is stable across reconciles.
	before := string(c1.Spec.Connection.KubeConfig)
	ctrl.AgentChanged("member1")
	time.Sleep(200 * time.Millisecond)
	if string(e.get("member1").Spec.Connection.KubeConfig) != before {
		t.Fatal("kubeconfig rewritten without need")
	}

	// The last agent leaves: listeners stop, AgentAvailable=False.
	agent.stop()
	waitFor(t, "AgentAvailable=False", func() bool {
		c := cond(e.get("member1"), kubesphere.ConditionAgentAvailable)
		return c != nil && c.Status == "False" && ctrl.ListenerAddr("member1") == nil
	})
	if _, err := net.Dial("tcp", addr.String()); err == nil {
		t.Fatal("listener still accepts")
	}

	// No longer a proxy cluster, or deleted: Service removed.
	u2, _ := dyn.Resource(kubesphere.ClusterGVR).Get(ctx, "member2", metav1.GetOptions{})
	_ = unstructured.SetNestedField(u2.Object, "direct", "spec", "connection", "type")
	if _, err := dyn.Resource(kubesphere.ClusterGVR).Update(ctx, u2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := dyn.Resource(kubesphere.ClusterGVR).Delete(ctx, "member1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"member1", "member2"} {
		waitFor(t, "Service mc-"+n+" removed", func() bool {
			_, err := kube.CoreV1().Services("kubesphere-system").Get(ctx, "mc-"+n, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
	}
}

// freePortBase finds 21 consecutive ports free on 127.0.0.1 for kube listeners and their +10000.
func freePortBase(t *testing.T) int {
	// Below the ephemeral range (32768+) for both ports, so no outgoing connection takes one.
	for base := 12000; base < 22000; base += 50 {
		ok := true
		for p := base; p <= base+20 && ok; p++ {
			for _, q := range []int{p, p + KubeSpherePortOffset} {
				l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", q))
				if err != nil {
					ok = false
					break
				}
				l.Close()
			}
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}
