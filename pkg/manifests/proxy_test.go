package manifests

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// updateGolden is -update: rewrite testdata/*.golden.yaml from the current templates. Another test
// file of this package may register the same flag first; then goldenUpdate reads that one.
var updateGolden = registerUpdateFlag()

func registerUpdateFlag() *bool {
	if flag.Lookup("update") != nil {
		return nil
	}
	return flag.Bool("update", false, "rewrite golden files")
}

func goldenUpdate() bool {
	if updateGolden != nil {
		return *updateGolden
	}
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if goldenUpdate() {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the rendering (run go test ./pkg/manifests -run Proxy -update to accept):\n--- got ---\n%s", path, got)
	}
}

func testProxyValues() ProxyValues {
	v := DefaultProxyValues()
	v.Image = "ghcr.io/ks-mc/ks-mc:v1.2.3"
	return v
}

func TestRenderProxyDeploymentGolden(t *testing.T) {
	got, err := RenderProxyDeploymentYAML(testProxyValues())
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "proxy-deployment.golden.yaml", got)
	if strings.Contains(string(got), ProxyAllowPlaintextArg) {
		t.Errorf("the default rendering carries %s: plaintext agents must be refused unless asked for", ProxyAllowPlaintextArg)
	}
}

// The plaintext opt-in is rendered only when asked for, and read back from the live object.
func TestRenderProxyDeploymentPlaintextGolden(t *testing.T) {
	v := testProxyValues()
	v.AllowPlaintextAgents = true
	got, err := RenderProxyDeploymentYAML(v)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "proxy-deployment-plaintext.golden.yaml", got)
	d, err := ProxyDeployment(v)
	if err != nil {
		t.Fatal(err)
	}
	if !ProxyAllowsPlaintextAgents(d) {
		t.Errorf("ProxyAllowsPlaintextAgents false for a rendering with %s: %v", ProxyAllowPlaintextArg, d.Spec.Template.Spec.Containers[0].Args)
	}
	def, err := ProxyDeployment(testProxyValues())
	if err != nil {
		t.Fatal(err)
	}
	if ProxyAllowsPlaintextAgents(def) {
		t.Error("ProxyAllowsPlaintextAgents true for the default rendering")
	}
	def.Spec.Template.Spec.Containers[0].Args = append(def.Spec.Template.Spec.Containers[0].Args, ProxyAllowPlaintextArg+"=true", ProxyAllowPlaintextArg+"=false")
	if ProxyAllowsPlaintextAgents(def) {
		t.Error("the last --allow-plaintext-agents=false must win")
	}
	if ProxyAllowsPlaintextAgents(nil) {
		t.Error("nil Deployment allows plaintext")
	}
}

func TestProxyDeploymentTyped(t *testing.T) {
	v := testProxyValues()
	v.ExtraArgs = []string{"--v=2", `--odd=a "quoted": value`}
	d, err := ProxyDeployment(v)
	if err != nil {
		t.Fatal(err)
	}
	if d.Namespace != "kubesphere-system" || d.Name != "tower" {
		t.Errorf("object %s/%s, want kubesphere-system/tower", d.Namespace, d.Name)
	}
	for _, labels := range []map[string]string{d.Labels, d.Spec.Template.Labels, d.Spec.Selector.MatchLabels} {
		if labels["app"] != "tower" || labels["app.kubernetes.io/name"] != "tower" {
			t.Errorf("labels %v must carry app=tower and app.kubernetes.io/name=tower (Service selectors)", labels)
		}
	}
	if len(d.Spec.Selector.MatchLabels) != 2 {
		t.Errorf("selector %v: keep it to the two Tower labels so it matches KubeSphere's Service", d.Spec.Selector.MatchLabels)
	}
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != "kubesphere" {
		t.Errorf("service account %q", spec.ServiceAccountName)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	wantArgs := []string{"proxy", "--bind-address=$(POD_IP)", "--port=8080", "--v=2", `--odd=a "quoted": value`}
	if strings.Join(c.Args, "\x00") != strings.Join(wantArgs, "\x00") {
		t.Errorf("args %q, want %q", c.Args, wantArgs)
	}
	if len(c.Command) != 0 {
		t.Errorf("command %q: the image entrypoint must run", c.Command)
	}
	if c.Image != v.Image {
		t.Errorf("image %q", c.Image)
	}
	var podIP *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "POD_IP" {
			podIP = &c.Env[i]
		}
	}
	if podIP == nil || podIP.ValueFrom == nil || podIP.ValueFrom.FieldRef == nil || podIP.ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("POD_IP env must come from fieldRef status.podIP: %+v", podIP)
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 8080 {
		t.Errorf("ports %+v", c.Ports)
	}
	// Readiness fails on a standby replica (no per-cluster listener): /readyz; liveness /health.
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe %+v must GET /readyz", c.ReadinessProbe)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/health" {
		t.Errorf("liveness probe %+v must GET /health", c.LivenessProbe)
	}
	if !IsProxyDeployment(d) {
		t.Error("IsProxyDeployment(rendered) = false")
	}
}

func TestProxyValuesValidate(t *testing.T) {
	for name, mod := range map[string]func(*ProxyValues){
		"no image":    func(v *ProxyValues) { v.Image = "" },
		"port 0":      func(v *ProxyValues) { v.Port = 0 },
		"port 70000":  func(v *ProxyValues) { v.Port = 70000 },
		"pull policy": func(v *ProxyValues) { v.ImagePullPolicy = "Sometimes" },
		"no sa":       func(v *ProxyValues) { v.ServiceAccount = "" },
	} {
		v := testProxyValues()
		mod(&v)
		if _, err := ProxyDeployment(v); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	v := testProxyValues()
	v.Port = 9443
	d, err := ProxyDeployment(v)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Spec.Template.Spec.Containers[0].Args[2]; got != "--port=9443" {
		t.Errorf("port arg %q", got)
	}
}

func TestIsProxyDeploymentTower(t *testing.T) {
	d, err := ProxyDeployment(testProxyValues())
	if err != nil {
		t.Fatal(err)
	}
	d.Spec.Template.Spec.Containers[0].Command = []string{"proxy", "--ca-cert=/ca/ca.crt"}
	d.Spec.Template.Spec.Containers[0].Args = nil
	if IsProxyDeployment(d) {
		t.Error("Tower's deployment (command /proxy) detected as the ks-mc proxy")
	}
}
