package manifests

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml")

const testToken = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden.yaml")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test ./pkg/manifests -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./pkg/manifests -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func mustYAML(t *testing.T, v AgentValues, tun kubesphere.Tunnel) []byte {
	t.Helper()
	objs, err := RenderAgent(tun, v)
	if err != nil {
		t.Fatal(err)
	}
	b, err := EncodeYAML(objs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRenderTowerAgentGolden(t *testing.T) {
	v := AgentValues{ClusterName: "member1", Token: testToken, ProxyServer: "http://172.16.0.10:30080", Image: "kubesphere/tower:v0.2.1"}
	got := mustYAML(t, v, kubesphere.TunnelTower)
	golden(t, "agent-tower", got)
	// Deterministic.
	if again := mustYAML(t, v, kubesphere.TunnelTower); !bytes.Equal(got, again) {
		t.Fatal("rendering twice gave different bytes")
	}
	objs, _ := RenderAgent(kubesphere.TunnelTower, v)
	if len(objs) != 1 {
		t.Fatalf("tower agent: %d objects, want 1", len(objs))
	}
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[0].Object, &d); err != nil {
		t.Fatal(err)
	}
	c := d.Spec.Template.Spec.Containers[0]
	want := []string{"/agent", "--name=member1", "--token=" + testToken, "--proxy-server=http://172.16.0.10:30080", "--keepalive=10s",
		"--kubesphere-service=ks-apiserver.kubesphere-system.svc:80", "--kubernetes-service=kubernetes.default.svc:443", "--v=0"}
	if strings.Join(c.Command, " ") != strings.Join(want, " ") {
		t.Errorf("command = %q, want %q", c.Command, want)
	}
	if d.Namespace != "kubesphere-system" || d.Name != "cluster-agent" || d.Spec.Template.Spec.ServiceAccountName != "kubesphere" {
		t.Errorf("identity = %s/%s sa %s", d.Namespace, d.Name, d.Spec.Template.Spec.ServiceAccountName)
	}
	if d.Spec.Template.Labels["app"] != "agent" || d.Spec.Template.Labels["app.kubernetes.io/part-of"] != "tower" || len(d.Spec.Template.Labels) != 2 {
		t.Errorf("labels = %v", d.Spec.Template.Labels)
	}
	r := c.Resources
	if r.Requests.Cpu().String() != "100m" || r.Requests.Memory().String() != "100M" || r.Limits.Cpu().String() != "1" || r.Limits.Memory().String() != "200M" {
		t.Errorf("resources = %+v", r)
	}
	if c.Image != "kubesphere/tower:v0.2.1" {
		t.Errorf("image = %s", c.Image)
	}
}

func TestRenderKSMCAgentGolden(t *testing.T) {
	v := AgentValues{ClusterName: "member1", Token: testToken, ProxyServer: "https://172.16.0.10:30080",
		Image: "ghcr.io/ks-mc/ks-mc:v1.2.3", CACertHash: "sha256:" + strings.Repeat("ab", 32)}
	got := mustYAML(t, v, kubesphere.TunnelKsMc)
	golden(t, "agent-ksmc", got)
	objs, _ := RenderAgent(kubesphere.TunnelKsMc, v)
	if len(objs) != 2 || objs[0].GetKind() != "Secret" || objs[1].GetKind() != "Deployment" {
		t.Fatalf("want Secret + Deployment, got %d objects", len(objs))
	}
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[1].Object, &d); err != nil {
		t.Fatal(err)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if c.Args[0] != "agent" || len(c.Command) != 0 {
		t.Errorf("args %q command %q: the mode goes first in args", c.Args, c.Command)
	}
	// The token is never on the command line or in an env value: only in the Secret.
	dep, _ := EncodeYAML(objs[1:])
	if strings.Contains(string(dep), testToken) {
		t.Error("the bundled agent's Deployment contains the token")
	}
	var sec corev1.Secret
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[0].Object, &sec); err != nil {
		t.Fatal(err)
	}
	if sec.StringData[kubesphere.AgentTokenSecretKey] != testToken {
		t.Error("the Secret does not hold the token")
	}
	if !contains(c.Args, "--ca-cert-hash="+v.CACertHash) || !contains(c.Args, "--token-file="+AgentTokenMountPath+"/token") {
		t.Errorf("args = %q", c.Args)
	}
	// A new token rolls the pods.
	v2 := v
	v2.Token = strings.Repeat("f", 64)
	objs2, _ := RenderAgent(kubesphere.TunnelKsMc, v2)
	h1, _, _ := unstructured.NestedString(objs[1].Object, "spec", "template", "metadata", "annotations", "ks-mc.io/config-hash")
	h2, _, _ := unstructured.NestedString(objs2[1].Object, "spec", "template", "metadata", "annotations", "ks-mc.io/config-hash")
	if h1 == "" || h1 == h2 {
		t.Errorf("config hash %q vs %q: a token change must change it", h1, h2)
	}
}

func TestRenderKSMCAgentDefaultImage(t *testing.T) {
	objs, err := RenderAgent(kubesphere.TunnelKsMc, AgentValues{ClusterName: "m", Token: "t0k3n", ProxyServer: "http://1.2.3.4:8080"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := EncodeYAML(objs)
	if !strings.Contains(string(b), "ghcr.io/ks-mc/ks-mc:") {
		t.Errorf("default image is not version.Image():\n%s", b)
	}
	if strings.Contains(string(b), "--ca-cert-hash") {
		t.Error("no pin given, yet --ca-cert-hash rendered")
	}
}

func TestRenderAgentValidation(t *testing.T) {
	ok := AgentValues{ClusterName: "m", Token: "secret-token-value", ProxyServer: "http://1.2.3.4:8080"}
	cases := map[string]struct {
		tun kubesphere.Tunnel
		mut func(*AgentValues)
	}{
		"no name":           {kubesphere.TunnelTower, func(v *AgentValues) { v.ClusterName = "" }},
		"no token":          {kubesphere.TunnelTower, func(v *AgentValues) { v.Token = "" }},
		"bad proxy":         {kubesphere.TunnelTower, func(v *AgentValues) { v.ProxyServer = "1.2.3.4:8080" }},
		"https without pin": {kubesphere.TunnelKsMc, func(v *AgentValues) { v.ProxyServer = "https://1.2.3.4" }},
		"bad pin":           {kubesphere.TunnelKsMc, func(v *AgentValues) { v.CACertHash = "md5:x" }},
		"unresolved auto":   {kubesphere.TunnelAuto, func(*AgentValues) {}},
	}
	for name, tc := range cases {
		v := ok
		tc.mut(&v)
		_, err := RenderAgent(tc.tun, v)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if strings.Contains(err.Error(), "secret-token-value") {
			t.Errorf("%s: error quotes the token: %v", name, err)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestRenderClusterGolden(t *testing.T) {
	c, err := RenderCluster(ClusterValues{Name: "member1", Provider: "Aliyun ACK", Description: "EU \"prod\": member: 1", Group: "production",
		MemberUID: "0b7c2e1a-1111-2222-3333-444455556666", Labels: map[string]string{"env": "prod"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := EncodeYAML([]*unstructured.Unstructured{c})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "cluster", b)
	if c.GetAnnotations()[kubesphere.DescriptionAnnotation] != "EU \"prod\": member: 1" {
		t.Errorf("description not kept verbatim: %q", c.GetAnnotations()[kubesphere.DescriptionAnnotation])
	}
	typ, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "type")
	jf, _, _ := unstructured.NestedBool(c.Object, "spec", "joinFederation")
	en, _, _ := unstructured.NestedBool(c.Object, "spec", "enable")
	if typ != "proxy" || !jf || !en || c.GetAPIVersion() != "cluster.kubesphere.io/v1alpha1" || c.GetKind() != "Cluster" || c.GetNamespace() != "" {
		t.Errorf("cluster = %v", c.Object)
	}
	if _, err := RenderCluster(ClusterValues{Name: "Bad_Name"}); err == nil {
		t.Error("invalid name accepted")
	}
}

func TestClusterNames(t *testing.T) {
	for in, want := range map[string]string{
		"member1":       "member1",
		"kind-Member_1": "kind-member-1",
		"arn:aws:eks:eu-west-1:123456789012:cluster/prod": "arn-aws-eks-eu-west-1-123456789012-cluster-prod",
		"gke_proj_europe-west1_c1":                        "gke-proj-europe-west1-c1",
		"--x--":                                           "x",
		"@@@":                                             "",
		"kubernetes-admin@cluster.local":                  "kubernetes-admin-cluster-local",
		strings.Repeat("a", 59) + "-" + "bbbb":            strings.Repeat("a", 59),
	} {
		got := SanitizeClusterName(in)
		if got != want {
			t.Errorf("SanitizeClusterName(%q) = %q, want %q", in, got, want)
		}
		if got != "" {
			if err := ValidateClusterName(got); err != nil {
				t.Errorf("sanitised %q is invalid: %v", got, err)
			}
		}
	}
	if got := SanitizeClusterName(strings.Repeat("ab", 40)); len(got) != 60 {
		t.Errorf("not trimmed to 60: %d", len(got))
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a.b", "a_b", strings.Repeat("a", 61)} {
		if ValidateClusterName(bad) == nil {
			t.Errorf("ValidateClusterName(%q) accepted", bad)
		}
	}
	for _, good := range []string{"a", "m1", "member-1", strings.Repeat("a", 60)} {
		if err := ValidateClusterName(good); err != nil {
			t.Errorf("ValidateClusterName(%q): %v", good, err)
		}
	}
}

func TestRedact(t *testing.T) {
	const hashPin = "sha256:abababababababababababababababababababababababababababababababab"
	tower, _ := RenderAgent(kubesphere.TunnelTower, AgentValues{ClusterName: "m", Token: testToken, ProxyServer: "http://1.2.3.4:8080"})
	ksmc, _ := RenderAgent(kubesphere.TunnelKsMc, AgentValues{ClusterName: "m", Token: testToken, ProxyServer: "http://1.2.3.4:8080", CACertHash: hashPin})
	cluster, _ := RenderCluster(ClusterValues{Name: "m"})
	_ = unstructured.SetNestedField(cluster.Object, testToken, "spec", "connection", "token")
	_ = unstructured.SetNestedField(cluster.Object, "a3ViZWNvbmZpZw==", "spec", "connection", "kubeconfig")
	sec := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "s"},
		"data": map[string]any{"token": "MDEyMzQ1Njc4OWFiY2RlZg=="}}}
	cc := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "installer.kubesphere.io/v1alpha1", "kind": "ClusterConfiguration",
		"spec": map[string]any{"authentication": map[string]any{"jwtSecret": testToken}}}}
	envDep := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"containers": []any{map[string]any{"name": "a", "env": []any{map[string]any{"name": "KSMC_TOKEN", "value": testToken}, map[string]any{"name": "POD_IP", "value": "1.2.3.4"}}}}}}}}}
	all := append(append(append([]*unstructured.Unstructured{}, tower...), ksmc...), cluster, sec, cc, envDep)
	before, _ := EncodeYAML(all)
	red := Redact(all)
	b, err := EncodeYAML(red)
	if err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{testToken, "a3ViZWNvbmZpZw==", "MDEyMzQ1Njc4OWFiY2RlZg=="} {
		if strings.Contains(string(b), leak) {
			t.Errorf("redacted output still contains %q:\n%s", leak, b)
		}
	}
	for _, keep := range []string{"--token=" + RedactedValue, "--ca-cert-hash=" + hashPin, "1.2.3.4", "--proxy-server=http://1.2.3.4:8080", "token: " + RedactedValue} {
		if !strings.Contains(string(b), keep) {
			t.Errorf("redacted output lost %q:\n%s", keep, b)
		}
	}
	after, _ := EncodeYAML(all)
	if !bytes.Equal(before, after) {
		t.Error("Redact modified its input")
	}
	if got := Scrub("agent failed: token "+testToken+" rejected", testToken, ""); strings.Contains(got, testToken) || !strings.Contains(got, RedactedValue) {
		t.Errorf("Scrub = %q", got)
	}
}
