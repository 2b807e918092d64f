package cmd

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

var updateDiagnose = flag.Bool("update", false, "rewrite testdata/diagnose.golden.*")

var diagNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

const (
	testHostJWT   = "hostJwtSecretValue0123456789abcd"
	testMemberJWT = "otherJwtSecretValue0123456789abc"
	testToken1    = "tokenOfMember1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	testToken2    = "tokenOfMember2bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	testAddr      = "http://203.0.113.1:30080"
)

func ksConfigMap(jwt, maxAge, role, addr string) *corev1.ConfigMap {
	cfg := map[string]any{"authentication": map[string]any{"jwtSecret": jwt, "maximumClockSkew": "10s", "oauthOptions": map[string]any{"accessTokenMaxAge": maxAge}},
		"multicluster": map[string]any{"clusterRole": role, "enable": role == "host"}}
	if addr != "" {
		cfg["multicluster"].(map[string]any)["proxyPublishAddress"] = addr
	}
	b, _ := yaml.Marshal(cfg)
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: kubesphere.ConfigName, Namespace: kubesphere.Namespace},
		Data: map[string]string{kubesphere.ConfigKey: string(b)}}
}

func diagCC(role, jwt, addr string) *unstructured.Unstructured {
	mc := map[string]any{"clusterRole": role}
	if addr != "" {
		mc["proxyPublishAddress"] = addr
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "installer.kubesphere.io/v1alpha1", "kind": "ClusterConfiguration",
		"metadata": map[string]any{"name": "ks-installer", "namespace": "kubesphere-system"},
		"spec":     map[string]any{"multicluster": mc, "authentication": map[string]any{"jwtSecret": jwt}},
		"status":   map[string]any{"core": map[string]any{"version": "v3.4.1", "status": "enabled"}, "multicluster": map[string]any{"status": "enabled"}},
	}}
}

func kubeconfigWithCert(t *testing.T, notAfter time.Time) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes-admin"},
		NotBefore: notAfter.Add(-365 * 24 * time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	cfg := map[string]any{"apiVersion": "v1", "kind": "Config", "current-context": "c",
		"clusters": []any{map[string]any{"name": "c", "cluster": map[string]any{"server": "https://10.96.0.10:6443"}}},
		"users": []any{map[string]any{"name": "u", "user": map[string]any{
			"client-certificate-data": base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			"client-key-data":         base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))}}},
		"contexts": []any{map[string]any{"name": "c", "context": map[string]any{"cluster": "c", "user": "u"}}}}
	b, _ := yaml.Marshal(cfg)
	return base64.StdEncoding.EncodeToString(b)
}

func diagCluster(t *testing.T, name, uid, token string, port int64, kubeconfig string) *unstructured.Unstructured {
	c := testClusterObj(name, uid, false,
		map[string]any{"type": "AgentAvailable", "status": "True"}, map[string]any{"type": "Ready", "status": "True"})
	_ = unstructured.SetNestedField(c.Object, token, "spec", "connection", "token")
	_ = unstructured.SetNestedField(c.Object, port, "spec", "connection", "kubernetesAPIServerPort")
	_ = unstructured.SetNestedField(c.Object, "v3.4.1", "status", "kubeSphereVersion")
	if kubeconfig != "" {
		_ = unstructured.SetNestedField(c.Object, kubeconfig, "spec", "connection", "kubeconfig")
	}
	return c
}

func heartbeat(cluster string, agents int, renewed time.Time) *coordinationv1.Lease {
	id, dur, rt := "tower-0", int32(30), metav1.NewMicroTime(renewed)
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: kubesphere.HeartbeatLeaseName(cluster), Namespace: "kubesphere-system",
		Labels:      map[string]string{kubesphere.HeartbeatClusterLabel: cluster},
		Annotations: map[string]string{kubesphere.HeartbeatAgentsAnnotation: strconv.Itoa(agents), kubesphere.HeartbeatRTTAnnotation: "2.5ms"}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &dur, RenewTime: &rt}}
}

func memberFake(t *testing.T, ctxName, uid, jwt, maxAge, name, token string, readyReplicas int32) *installer.Clients {
	t.Helper()
	objs, err := manifests.RenderAgent(kubesphere.TunnelKsMc, manifests.AgentValues{ClusterName: name, Token: token, ProxyServer: testAddr})
	if err != nil {
		t.Fatal(err)
	}
	var kubeObjs []runtime.Object
	kubeObjs = append(kubeObjs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: types.UID(uid)}}, ksConfigMap(jwt, maxAge, "member", ""))
	for _, o := range objs {
		switch o.GetKind() {
		case "Deployment":
			var d appsv1.Deployment
			_ = runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d)
			d.Status.ReadyReplicas, d.Status.Replicas, d.Status.UpdatedReplicas, d.Status.AvailableReplicas = readyReplicas, 1, 1, readyReplicas
			kubeObjs = append(kubeObjs, &d)
		case "Secret":
			var s corev1.Secret
			_ = runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &s)
			s.Data = map[string][]byte{}
			for k, v := range s.StringData {
				s.Data[k] = []byte(v)
			}
			s.StringData = nil
			kubeObjs = append(kubeObjs, &s)
		}
	}
	cc := diagCC("member", jwt, "")
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList", kubesphere.ClusterGVR: "ClusterList"}, cc)
	return &installer.Clients{Kube: fake.NewClientset(kubeObjs...), Dynamic: dyn, Context: ctxName}
}

// diagFleet: member1 healthy; member2 with its jwtSecret and accessTokenMaxAge wrong, a wrong agent
// token, a stale heartbeat while its conditions say True; member3 (no context) with an expired
// certificate, Terminating, and member1's port.
func diagFleet(t *testing.T) (*installer.Clients, []*installer.Clients) {
	t.Helper()
	proxy, err := manifests.ProxyDeployment(manifests.DefaultProxyValues())
	if err != nil {
		t.Fatal(err)
	}
	proxy.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	proxy.Generation = 1
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "tower", Namespace: "kubesphere-system"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{{Port: 8080, TargetPort: intstr.FromInt32(8080), NodePort: 30080}}}}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "203.0.113.1"}}}}
	kube := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: "uid-h"}},
		ksConfigMap(testHostJWT, "2h", "host", testAddr), proxy, svc, node,
		heartbeat("member1", 1, diagNow.Add(-4*time.Second)), heartbeat("member2", 1, diagNow.Add(-5*time.Minute)))
	m3 := diagCluster(t, "member3", "uid-3", "tok3-cccccccccccccccccccccc", 6000, kubeconfigWithCert(t, diagNow.Add(-48*time.Hour)))
	del := metav1.NewTime(diagNow.Add(-2 * time.Hour))
	m3.SetDeletionTimestamp(&del)
	m3.SetFinalizers([]string{"finalizer.cluster.kubesphere.io"})
	hostCluster := testClusterObj("host", "uid-h", true, map[string]any{"type": "Ready", "status": "True"})
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList", kubesphere.ClusterGVR: "ClusterList"},
		diagCC("host", testHostJWT, testAddr), hostCluster,
		diagCluster(t, "member1", "uid-1", testToken1, 6000, kubeconfigWithCert(t, diagNow.Add(300*24*time.Hour))),
		diagCluster(t, "member2", "uid-2", testToken2, 6001, kubeconfigWithCert(t, diagNow.Add(300*24*time.Hour))), m3)
	host := &installer.Clients{Kube: kube, Dynamic: dyn, Context: "host"}
	return host, []*installer.Clients{
		memberFake(t, "member1", "uid-1", testHostJWT, "0s", "member1", testToken1, 1),
		memberFake(t, "member2", "uid-2", testMemberJWT, "1h", "member2", "wrongToken0000000000000000000000", 1),
	}
}

func runDiagnose(t *testing.T, output string, strict bool, bundle string) (string, string, error) {
	t.Helper()
	host, members := diagFleet(t)
	f, out, errb := testFactory(t, "host")
	o := NewDiagnoseOptions(f.Streams)
	o.Output, o.Strict, o.Bundle = output, strict, bundle
	o.Host.Context = "host"
	o.Now = func() time.Time { return diagNow }
	o.factory, o.Contexts = useClients(f, nil, host, members...), contextsOf(members)
	o.Diagnose = func(ctx context.Context, do installer.DiagnoseOptions) (*installer.DiagnoseReport, *installer.Bundle, error) {
		do.Now = func() time.Time { return diagNow }
		do.Clock = func(context.Context, *installer.Clients) (time.Duration, time.Duration, error) {
			return 0, time.Millisecond, nil
		}
		do.ProxyHealth = func(context.Context, string, time.Duration) error { return nil }
		do.ServiceProxy = func(context.Context, *installer.Clients, string) error { return errors.New("no endpoints") }
		return installer.Diagnose(ctx, do)
	}
	err := o.Run(context.Background())
	// The /health probe's latency is measured: not golden material.
	text := healthLatency.ReplaceAllString(out.String(), "${1}0")
	return text, errb.String(), err
}

var healthLatency = regexp.MustCompile(`(?m)((?:answers from this machine \[|"id": "host.proxyHealth",\n(?:.*\n){4}\s+"latencyMs": ))[0-9.]+`)

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateDiagnose {
		_ = os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (run with -update to accept):\n%s", name, got)
	}
}

func TestDiagnoseGolden(t *testing.T) {
	for _, format := range []string{"", "json"} {
		out, _, err := runDiagnose(t, format, false, "")
		var exit *ExitError
		if !errors.As(err, &exit) || exit.Code != 1 {
			t.Fatalf("want exit code 1, got %v", err)
		}
		for _, s := range []string{testHostJWT, testMemberJWT, testToken1, testToken2, "wrongToken0000000000000000000000"} {
			if strings.Contains(out, s) {
				t.Fatalf("output holds a secret:\n%s", out)
			}
		}
		if format == "" {
			golden(t, "diagnose.golden.txt", out)
			continue
		}
		// Durations vary from run to run.
		var v map[string]any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatal(err)
		}
		golden(t, "diagnose.golden.json", out)
		var view DiagnoseView
		_ = json.Unmarshal([]byte(out), &view)
		want := map[string]installer.DiagStatus{
			"host.role/host": "ok", "cluster.tunnel/cluster/member1": "ok", "member.jwtSecret/cluster/member1": "ok",
			"member.jwtSecret/cluster/member2": "fail", "member.accessTokenMaxAge/cluster/member2": "fail", "member.agent/cluster/member2": "fail",
			"cluster.tunnel/cluster/member2": "fail", "cluster.certificate/cluster/member3": "fail", "cluster.terminating/cluster/member3": "fail",
			"cluster.port/cluster/member3": "fail", "cluster.port/cluster/member2": "ok", "cluster.memberContext/cluster/member3": "skip",
		}
		got := map[string]installer.DiagStatus{}
		for _, c := range view.Checks {
			got[c.ID+"/"+c.Subject] = c.Status
			if c.Evidence == nil {
				t.Errorf("%s: evidence must be a list", c.ID)
			}
		}
		for k, st := range want {
			if got[k] != st {
				t.Errorf("%s = %q, want %q", k, got[k], st)
			}
		}
	}
}

func TestDiagnoseBundleHasNoSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.tar.gz")
	if _, errOut, _ := runDiagnose(t, "", false, path); !strings.Contains(errOut, "support bundle written") {
		t.Fatalf("stderr: %s", errOut)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	var all bytes.Buffer
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		_, _ = io.Copy(&all, tr)
	}
	host, _ := diagFleet(t)
	secrets := []string{testHostJWT, testMemberJWT, testToken1, testToken2, "wrongToken0000000000000000000000", "tok3-cccccccccccccccccccccc"}
	for _, name := range []string{"member1", "member3"} {
		c, _ := installer.GetCluster(context.Background(), host, name)
		kc, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
		secrets = append(secrets, kc[:40])
	}
	for _, s := range secrets {
		if strings.Contains(all.String(), s) {
			t.Errorf("bundle holds a secret (%.6s…)", s)
		}
	}
	for _, want := range []string{"report.json", "report.txt", "host/kubesphere-config.yaml", "host/clusters/member2.yaml", "members/member2/deployment-cluster-agent.yaml"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("bundle lacks %s: %v", want, names)
		}
	}
}

func TestDiagnoseStrictAndFlags(t *testing.T) {
	o := NewDiagnoseOptions(genericiooptions.NewTestIOStreamsDiscard())
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--host-context") {
		t.Errorf("no host: %v", err)
	}
	o.Host.Context = "h"
	o.AllContexts, o.Contexts = true, []string{"m"}
	if err := o.Validate(); err == nil {
		t.Error("--context with --all-contexts accepted")
	}
	f := filterReport(&installer.DiagnoseReport{Findings: []installer.Finding{{Subject: "host", Status: "ok"}, {Subject: "cluster/a", Status: "fail"}, {Subject: "cluster/b", Status: "fail"}}}, "b")
	if len(f.Findings) != 2 || f.Summary.Fail != 1 || f.Summary.OK != 1 {
		t.Errorf("--name filter: %+v", f)
	}
	r := &installer.DiagnoseReport{Summary: installer.DiagnoseSummary{OK: 3, Warn: 1}}
	if r.Failed(false) || !r.Failed(true) {
		t.Error("warnings: exit 0, or 1 with --strict")
	}
}

func TestDiagnoseCompletion(t *testing.T) {
	kc := writeKubeconfig(t, "host", map[string]string{"host": "https://127.0.0.1:1", "member1": "https://127.0.0.1:1", "member2": "https://127.0.0.1:1"})
	got, _, _ := complete(t, nil, "diagnose", "--kubeconfig", kc, "--host-context", "host", "--context", "mem")
	if strings.Join(got, ",") != "member1,member2" {
		t.Errorf("--context completes %v", got)
	}
	got, _, _ = complete(t, nil, "diagnose", "--kubeconfig", kc, "--context", "member1", "--context", "")
	if len(got) != 3 {
		t.Errorf("a repeated --context completes %v", got)
	}
	got, _, _ = complete(t, nil, "diagnose", "--kubeconfig", kc, "--host-context", "ho")
	if strings.Join(got, ",") != "host" {
		t.Errorf("--host-context completes %v", got)
	}
}
