package kube

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	kruntime "k8s.io/apimachinery/pkg/runtime"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// Hostile-input and identity tests of the Controller (issue 9), moved from pkg/tunnel's
// hardening_test.go with the Controller.

// newCtrlEnv starts a Controller over fake clients holding objs, as the harness proxy's
// authenticator.
func newCtrlEnv(t *testing.T, h *harness, objs ...kruntime.Object) (*ctrlEnv, *tunnel.Proxy) {
	t.Helper()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(kruntime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterGVR: "ClusterList"}, objs...)
	kube := fake.NewClientset()
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			_, _ = kube.CoreV1().Services("kubesphere-system").Create(context.Background(), serviceWithIP(u.GetName(), "10.96.0.11"), metav1.CreateOptions{})
		}
	}
	log := h.logs.logger()
	cc := DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA, cc.BindAddress, cc.Logger = dyn, kube, h.ca, "127.0.0.1", &log
	base := freePortBase(t)
	cc.PortMin, cc.PortMax = base, base+20
	ctrl, err := NewController(cc)
	if err != nil {
		t.Fatal(err)
	}
	h.auth = nil
	p := h.startWith(ctrl)
	ctrl.SetProxy(p)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ctrl.Close() })
	go func() { _ = ctrl.Run(ctx, 2) }()
	return &ctrlEnv{t: t, ctrl: ctrl, dyn: dyn, kube: kube, ca: h.ca}, p
}

// TestControllerRevokesSessions: rotating spec.connection.token, recreating the Cluster (a new UID)
// or deleting it closes the sessions admitted before.
func TestControllerRevokesSessions(t *testing.T) {
	h := newHarness(t, "tcp")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", h.logs.all())
		}
	})
	obj := clusterObj(testCluster, "proxy", 0, testToken, time.Now().Add(-time.Hour))
	obj.SetUID("uid-1")
	e, p := newCtrlEnv(t, h, obj)
	api := e.dyn.Resource(kubesphere.ClusterGVR)
	ctx := context.Background()
	update := func(change func(u *unstructured.Unstructured)) {
		t.Helper()
		u, err := api.Get(ctx, testCluster, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		change(u)
		if _, err := api.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	agent := h.startAgent(agentOpts{})
	// session waits for one agent session, the proxy's and the agent's; its closed reports whether
	// that session ended since (the agent's next event is its disconnect). pkg/tunnel's registry is
	// not reachable from here: the agent's side of the session tells instead.
	session := func() *sessionWatch {
		t.Helper()
		for !agent.nextEvent(t).Connected {
		}
		waitFor(t, "one agent session", func() bool { return p.Agents(testCluster) == 1 })
		return &sessionWatch{agent}
	}

	// 1. Token rotation: the old session is closed, the agent (old token) is refused.
	s := session()
	start := time.Now()
	update(func(u *unstructured.Unstructured) {
		_ = unstructured.SetNestedField(u.Object, "ffff"+testToken[4:], "spec", "connection", "token")
	})
	waitFor(t, "session closed after token rotation", s.closed)
	t.Logf("token rotated → old session closed: %s", time.Since(start).Round(time.Microsecond))
	h.waitAgents(0)

	// 2. The Cluster recreated under the same name with the same token (a new UID): closed too.
	update(func(u *unstructured.Unstructured) {
		_ = unstructured.SetNestedField(u.Object, testToken, "spec", "connection", "token")
	})
	s = session()
	update(func(u *unstructured.Unstructured) { u.SetUID("uid-2") })
	waitFor(t, "session closed after the Cluster got a new UID", s.closed)

	// 3. The Cluster deleted: the new session (admitted for uid-2) is closed.
	s = session()
	if err := api.Delete(ctx, testCluster, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "session closed after the Cluster was deleted", s.closed)
	h.waitAgents(0)
}

// TestCertBoundToCluster: the kubeconfig the proxy writes for one Cluster is refused by the
// listener of another; its own listener accepts it. CN and O stay Tower's.
func TestCertBoundToCluster(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	cl := h.listen() // the listener of testCluster
	h.startAgent(agentOpts{})
	h.waitAgents(1)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(kruntime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterGVR: "ClusterList"})
	cc := DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA = dyn, fake.NewClientset(), h.ca
	ctrl, err := NewController(cc)
	if err != nil {
		t.Fatal(err)
	}
	client := func(cluster string) *http.Client {
		raw, _, err := ctrl.kubeconfig(cluster, "https://"+cl.KubeAddr().String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		kc, err := clientcmd.Load(raw)
		if err != nil {
			t.Fatal(err)
		}
		ai := kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo]
		pair, err := tls.X509KeyPair(ai.ClientCertificateData, ai.ClientKeyData)
		if err != nil {
			t.Fatal(err)
		}
		if pair.Leaf.Subject.CommonName != AdminUser || len(pair.Leaf.Subject.Organization) != 1 || pair.Leaf.Subject.Organization[0] != "system:masters" {
			t.Fatalf("client certificate subject %v: the KubeSphere contract wants CN=kubernetes-admin, O=system:masters", pair.Leaf.Subject)
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.ca.Pool(), ServerName: "kubernetes",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }}}}
	}
	url := "https://" + cl.KubeAddr().String() + "/api/v1/namespaces/default"
	resp, err := client(testCluster).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Identity") != "agent" {
		t.Fatalf("own kubeconfig: %d identity %q", resp.StatusCode, resp.Header.Get("X-Identity"))
	}
	resp, err = client("member2").Get(url)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("the kubeconfig of member2 was accepted by the listener of %s: %d identity %q", testCluster, resp.StatusCode, resp.Header.Get("X-Identity"))
	}
	if !strings.Contains(h.logs.all(), "another cluster") {
		t.Fatal("the refusal is not logged")
	}
}

// sessionWatch is an agent session seen from the agent (TestControllerRevokesSessions).
type sessionWatch struct{ agent *runningAgent }

// closed reports whether an agent event (the disconnect) arrived since the session came up.
func (w *sessionWatch) closed() bool {
	select {
	case <-w.agent.events:
		return true
	default:
		return false
	}
}
