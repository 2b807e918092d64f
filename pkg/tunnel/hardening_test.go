package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"

	kruntime "k8s.io/apimachinery/pkg/runtime"
)

// Hostile-input and identity tests of the proxy port, the sessions and the per-cluster listeners
// (issue 9). Each of them fails on 0d0d212.

// rawRequest sends req on a fresh TCP connection to addr and returns the response and its body.
func rawRequest(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitLimit))
	// Written concurrently: the server may answer (431) before it read everything.
	go func() { _, _ = io.WriteString(c, req) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp, string(b)
}

func upgradeRequest(cluster, token string) string {
	r := "GET " + TunnelPath + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: " + UpgradeProtocol + "\r\n"
	if cluster != "" {
		r += ClusterHeader + ": " + cluster + "\r\n"
	}
	if token != "" {
		r += "Authorization: Bearer " + token + "\r\n"
	}
	return r + "\r\n"
}

// TestProxyHugeHeaders: 200 unauthenticated requests with a 1 MB X-Ksmc-Cluster are answered 431
// before the name is used; the heap does not keep them and the log does not echo them.
func TestProxyHugeHeaders(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	huge := strings.Repeat("a", 1_000_000)
	for i := 0; i < 200; i++ {
		resp, _ := rawRequest(t, h.addr, upgradeRequest(huge+strconv.Itoa(i), "x"))
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("request %d with a 1 MB cluster header: %s, want 431", i, resp.Status)
		}
	}
	huge = ""
	runtime.GC()
	runtime.ReadMemStats(&ms)
	growth := int64(ms.HeapAlloc) - int64(before)
	t.Logf("heap growth after 200 requests with 1 MB headers: %d KiB", growth>>10)
	if growth > 32<<20 {
		t.Fatalf("heap grew by %d MiB", growth>>20)
	}
	if strings.Contains(h.logs.all(), strings.Repeat("a", 100)) {
		t.Fatal("the log echoes the header")
	}
}

// TestProxyMalformedClusterNames: a name that is not a DNS-1123 label of at most 60 characters is
// answered like an unknown cluster, and never logged.
func TestProxyMalformedClusterNames(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	ref, refBody := rawRequest(t, h.addr, upgradeRequest("nosuch", "x"))
	for _, name := range []string{"Member1", "a_b", strings.Repeat("b", 61), "-abc", "abc-", "a.b.c", "a%2fb", "x/../y"} {
		resp, body := rawRequest(t, h.addr, upgradeRequest(name, "x"))
		if resp.StatusCode != ref.StatusCode || body != refBody {
			t.Errorf("cluster %q: %s %q, want the unknown-cluster answer %s %q", name, resp.Status, body, ref.Status, refBody)
		}
		if strings.Contains(h.logs.all(), name) {
			t.Errorf("the log echoes the malformed name %q", name)
		}
	}
	if !strings.Contains(h.logs.all(), "nosuch") {
		t.Fatal("a valid unknown name is not logged")
	}
}

// TestNoClusterNameOracle: an unknown cluster, a known one with a wrong token and a known one
// without a token get the same answer.
func TestNoClusterNameOracle(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	type answer struct {
		status, body string
		header       http.Header
	}
	get := func(cluster, token string) answer {
		resp, body := rawRequest(t, h.addr, upgradeRequest(cluster, token))
		hd := resp.Header.Clone()
		hd.Del("Date")
		return answer{resp.Status, body, hd}
	}
	known := get(testCluster, "ffff"+testToken[4:])
	for _, c := range []struct{ cluster, token string }{{"nosuch", "ffff" + testToken[4:]}, {"nosuch", testToken}, {testCluster, ""}, {"nosuch", ""}} {
		a := get(c.cluster, c.token)
		if a.status != known.status || a.body != known.body || len(a.header) != len(known.header) {
			t.Fatalf("cluster %q token set %v: %s %q %v; a known cluster with a wrong token: %s %q %v",
				c.cluster, c.token != "", a.status, a.body, a.header, known.status, known.body, known.header)
		}
		for k := range known.header {
			if a.header.Get(k) != known.header.Get(k) {
				t.Fatalf("header %s: %q vs %q", k, a.header.Get(k), known.header.Get(k))
			}
		}
	}
}

// newCtrlEnv starts a Controller over fake clients holding objs, as the harness proxy's
// authenticator.
func newCtrlEnv(t *testing.T, h *harness, objs ...kruntime.Object) (*ctrlEnv, *Proxy) {
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
	session := func() *agentSession {
		t.Helper()
		var s *agentSession
		waitFor(t, "one agent session", func() bool {
			all := p.reg.all()
			if len(all) == 1 && !all[0].sess.IsClosed() {
				s = all[0]
			}
			return s != nil
		})
		return s
	}
	h.startAgent(agentOpts{})

	// 1. Token rotation: the old session is closed, the agent (old token) is refused.
	s := session()
	start := time.Now()
	update(func(u *unstructured.Unstructured) {
		_ = unstructured.SetNestedField(u.Object, "ffff"+testToken[4:], "spec", "connection", "token")
	})
	waitFor(t, "session closed after token rotation", func() bool { return s.sess.IsClosed() })
	t.Logf("token rotated → old session closed: %s", time.Since(start).Round(time.Microsecond))
	h.waitAgents(0)

	// 2. The Cluster recreated under the same name with the same token (a new UID): closed too.
	update(func(u *unstructured.Unstructured) {
		_ = unstructured.SetNestedField(u.Object, testToken, "spec", "connection", "token")
	})
	s = session()
	update(func(u *unstructured.Unstructured) { u.SetUID("uid-2") })
	waitFor(t, "session closed after the Cluster got a new UID", func() bool { return s.sess.IsClosed() })

	// 3. The Cluster deleted: the new session (admitted for uid-2) is closed.
	s = session()
	if err := api.Delete(ctx, testCluster, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "session closed after the Cluster was deleted", func() bool { return s.sess.IsClosed() })
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
