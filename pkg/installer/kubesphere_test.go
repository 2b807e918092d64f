package installer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

func TestHostPatchOnlyTouchesMulticluster(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	cc := fc.cc()

	p := HostPatch(cc, "")
	b, _ := p.JSON()
	if string(b) != `{"spec":{"multicluster":{"clusterRole":"host"}}}` {
		t.Errorf("role patch = %s", b)
	}
	p = HostPatch(cc, "http://203.0.113.2:31234")
	b, _ = p.JSON()
	if string(b) != `{"spec":{"multicluster":{"clusterRole":"host","proxyPublishAddress":"http://203.0.113.2:31234"}}}` {
		t.Errorf("role+address patch = %s", b)
	}

	// Applying it keeps every other field, known or not, exactly as it was.
	before := fc.cc().Object.DeepCopy()
	if _, err := PatchClusterConfiguration(context.Background(), fc.c, p, DryRunNone); err != nil {
		t.Fatal(err)
	}
	after := fc.cc().Object
	if r, _, _ := unstructured.NestedString(after.Object, "spec", "multicluster", "clusterRole"); r != "host" {
		t.Errorf("clusterRole = %q after patch", r)
	}
	for _, path := range [][]string{{"spec", "futureFeature"}, {"spec", "etcd"}, {"spec", "network"}, {"spec", "authentication"}, {"spec", "multicluster", "someNewKnob"}, {"status"}, {"metadata", "labels"}} {
		want, _, _ := unstructured.NestedFieldNoCopy(before.Object, path...)
		got, _, _ := unstructured.NestedFieldNoCopy(after.Object, path...)
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(got)
		if want == nil || string(wj) != string(gj) {
			t.Errorf("%s changed: %v → %v", strings.Join(path, "."), want, got)
		}
	}
	// The patch sent is a merge patch from field manager ks-mc.
	var sent []string
	for _, a := range fc.mutations() {
		sent = append(sent, fmt.Sprintf("%s %s", a.GetVerb(), a.GetResource().Resource))
	}
	if fmt.Sprint(sent) != "[patch clusterconfigurations]" {
		t.Errorf("actions = %v, want one patch", sent)
	}

	// Re-building against the patched object yields nothing to change.
	if p := HostPatch(fc.cc(), "http://203.0.113.2:31234"); !p.Empty() {
		t.Errorf("patch on a finished host = %v, want empty", p)
	}
	// A different address only changes the address.
	p = HostPatch(fc.cc(), "http://203.0.113.9:31234")
	b, _ = p.JSON()
	if string(b) != `{"spec":{"multicluster":{"proxyPublishAddress":"http://203.0.113.9:31234"}}}` {
		t.Errorf("address-only patch = %s", b)
	}
}

func TestPatchClusterConfigurationDryRun(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	p := HostPatch(fc.cc(), "")
	if cc, err := PatchClusterConfiguration(context.Background(), fc.c, p, DryRunClient); err != nil || cc != nil {
		t.Fatalf("client dry run: %v %v", cc, err)
	}
	if m := fc.mutations(); len(m) != 0 {
		t.Fatalf("client dry run sent %v", m)
	}
	if _, err := PatchClusterConfiguration(context.Background(), fc.c, p, DryRunServer); err != nil {
		t.Fatal(err)
	}
	m := fc.mutations()
	if len(m) != 1 {
		t.Fatalf("server dry run actions %v", m)
	}
	// The dynamic fake drops PatchOptions, so dryRun=All itself is asserted by the e2e test
	// (a real API server): here only that it is a merge patch.
	pa, ok := m[0].(k8stesting.PatchAction)
	if !ok || pa.GetPatchType() != types.MergePatchType {
		t.Fatalf("action %v is not a merge patch", m[0])
	}
}

func TestMergePatchSetIfDifferentNumbers(t *testing.T) {
	obj := map[string]any{"a": map[string]any{"n": int64(0), "s": "x"}}
	p := MergePatch{}
	if p.SetIfDifferent(obj, 0, "a", "n") {
		t.Error("int 0 vs int64 0 counted as a change")
	}
	if p.SetIfDifferent(obj, "x", "a", "s") {
		t.Error("same string counted as a change")
	}
	if !p.SetIfDifferent(obj, "y", "a", "s") || !p.SetIfDifferent(obj, true, "a", "new") {
		t.Error("changes not recorded")
	}
	b, _ := p.JSON()
	if string(b) != `{"a":{"new":true,"s":"y"}}` {
		t.Errorf("patch %s", b)
	}
	r := MergePatch{}
	r.Set("s3cr3t", "spec", "authentication", "jwtSecret")
	r.Set("member", "spec", "multicluster", "clusterRole")
	red := r.Redacted([]string{"spec", "authentication", "jwtSecret"}, []string{"spec", "nothere"})
	out, _ := json.Marshal(red)
	if strings.Contains(string(out), "s3cr3t") || !strings.Contains(string(out), "redacted") || !strings.Contains(string(out), "member") {
		t.Errorf("redacted = %s", out)
	}
	if v, _ := r.Get("spec", "authentication", "jwtSecret"); v != "s3cr3t" {
		t.Error("Redacted modified the original")
	}
}

func TestKubeSphereConfigAndSecret(t *testing.T) {
	k, err := ParseKubeSphereConfig(testKSConfig)
	if err != nil {
		t.Fatal(err)
	}
	if k.Multicluster.ClusterRole != "none" || k.Multicluster.Enable || k.Multicluster.AgentImage != "kubesphere/tower:v0.2.1" {
		t.Errorf("multicluster %+v", k.Multicluster)
	}
	if d, err := k.MaximumClockSkewDuration(); err != nil || d != 10*time.Second {
		t.Errorf("skew %v %v", d, err)
	}
	if d, err := k.AccessTokenMaxAgeDuration(); err != nil || d != 2*time.Hour {
		t.Errorf("max age %v %v", d, err)
	}
	const secret = "Zk3sPq8Lm2Vx9Nt4Rb7Wc1Yd6Hf0Ja5G"
	if k.Authentication.JWTSecret.Reveal() != secret {
		t.Fatal("jwtSecret not parsed")
	}
	j, _ := json.Marshal(k)
	y, _ := yaml.Marshal(k)
	for _, s := range []string{fmt.Sprint(k.Authentication.JWTSecret), fmt.Sprintf("%v %s %q %#v %+v", k.Authentication.JWTSecret, k.Authentication.JWTSecret, k.Authentication.JWTSecret, k, k), string(j), string(y)} {
		if strings.Contains(s, secret) {
			t.Errorf("secret leaked in %q", s)
		}
	}
	if !strings.Contains(string(y), RedactedValue) {
		t.Errorf("json has no redaction marker: %s", j)
	}
	// Errors never quote the document.
	_, err = ParseKubeSphereConfig("authentication: {jwtSecret: " + secret + "\n  bad: [")
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("parse error %v", err)
	}
	for in, want := range map[string]time.Duration{"0": 0, "0s": 0, "10s": 10 * time.Second, "1h30m": 90 * time.Minute} {
		if d, err := ParseKubeSphereDuration(in); err != nil || d != want {
			t.Errorf("ParseKubeSphereDuration(%q) = %v, %v", in, d, err)
		}
	}
	if _, err := ParseKubeSphereDuration("soon"); err == nil {
		t.Error("no error for soon")
	}
	// A member's config: bare 0 parses as zero.
	m, _ := ParseKubeSphereConfig("authentication:\n  oauthOptions:\n    accessTokenMaxAge: 0\n")
	if d, err := m.AccessTokenMaxAgeDuration(); err != nil || d != 0 {
		t.Errorf("member max age %v %v", d, err)
	}
}

func TestParseInstallerLog(t *testing.T) {
	for _, tc := range []struct {
		name, log string
		phase     InstallerPhase
		task      string
		started   bool
	}{
		{"empty", "", InstallerUnknown, "", false},
		{"running", "Start installing monitoring\nStart installing multicluster\n", InstallerRunning, "multicluster", true},
		{"task progress", "Start installing ks-core\ntask multicluster status is running (3/4)\n", InstallerRunning, "multicluster", true},
		{"done", "Start installing ks-core\ntask ks-core status is successful (1/1)\n####\n###              Welcome to KubeSphere!           ###\n", InstallerIdle, "", true},
		{"failed", "Start installing multicluster\nTask 'multicluster' failed:\n{\"msg\": \"boom\"}\n", InstallerFailed, "multicluster", true},
		{"failed status", "task ks-core status is successful (1/2)\ntask openpitrix status is failed (2/2)\n", InstallerFailed, "openpitrix", true},
		{"old failure only", "Task 'multicluster' failed:\n{}\n", InstallerFailed, "multicluster", false},
		{"failed then rerun", "Task 'ks-core' failed: x\nStart installing ks-core\n", InstallerRunning, "ks-core", true},
		{"sandbox stand-in", "ks-installer: Start installing (spec changed)\nks-installer: Welcome to KubeSphere! (role host)\nks-installer: Start installing (spec changed)\n", InstallerRunning, "", true},
	} {
		st := ParseInstallerLog(tc.log)
		if st.Phase != tc.phase || st.Task != tc.task || st.RunStarted != tc.started {
			t.Errorf("%s: got %s/%q started %v, want %s/%q started %v", tc.name, st.Phase, st.Task, st.RunStarted, tc.phase, tc.task, tc.started)
		}
	}
}

func TestConfigDrift(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	cc := fc.cc()
	k, _ := ParseKubeSphereConfig(testKSConfig)
	if d := ConfigDrift(cc, k); len(d) != 0 {
		t.Errorf("fresh cluster drift %v", d)
	}
	_ = unstructured.SetNestedField(cc.Object.Object, "host", "spec", "multicluster", "clusterRole")
	_ = unstructured.SetNestedField(cc.Object.Object, "other-secret-value", "spec", "authentication", "jwtSecret")
	d := ConfigDrift(cc, k)
	if len(d) != 2 || !strings.Contains(d[0], "clusterRole") || !strings.Contains(d[1], "jwtSecret") {
		t.Errorf("drift %v", d)
	}
	if strings.Contains(strings.Join(d, " "), "other-secret-value") || strings.Contains(strings.Join(d, " "), "Zk3s") {
		t.Error("drift message holds a secret")
	}
}

func TestWaitForInstallerTimeoutAndDone(t *testing.T) {
	fc := newFakeCluster(t, testCCYAML)
	rec := &recorder{}
	err := WaitForInstaller(context.Background(), fc.c, WaitOptions{
		What: "the host settings", Timeout: 300 * time.Millisecond, Interval: 50 * time.Millisecond,
		Done: func(context.Context) (bool, string, error) { return false, "status.multicluster.status is unset", nil },
	}, rec)
	var te *InstallerTimeoutError
	if !asErr(err, &te) {
		t.Fatalf("err = %v, want InstallerTimeoutError", err)
	}
	msg := err.Error()
	for _, want := range []string{"status.multicluster.status is unset", "kubectl logs -n kubesphere-system -l app=ks-installer --context test-host", "--timeout"} {
		if !strings.Contains(msg, want) {
			t.Errorf("timeout message lacks %q:\n%s", want, msg)
		}
	}
	if len(rec.progres) == 0 {
		t.Error("no progress reported")
	}
	n := 0
	err = WaitForInstaller(context.Background(), fc.c, WaitOptions{
		What: "x", Timeout: time.Second, Interval: 10 * time.Millisecond,
		Done: func(context.Context) (bool, string, error) { n++; return n > 2, "", nil },
	}, nil)
	if err != nil || n != 3 {
		t.Errorf("err %v after %d polls", err, n)
	}
}

func TestWaitForInstallerFailsFastOnFailedTask(t *testing.T) {
	installerPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ks-installer-abc", Namespace: kubesphere.Namespace, Labels: map[string]string{"app": "ks-installer"}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	fc := newFakeCluster(t, testCCYAML, installerPod)
	logs := ""
	var gotSince *metav1.Time
	orig := podLogs
	podLogs = func(_ context.Context, _ *Clients, pod string, o *corev1.PodLogOptions) ([]byte, error) {
		if pod != "ks-installer-abc" {
			return nil, fmt.Errorf("logs of %s", pod)
		}
		gotSince = o.SinceTime
		return []byte(logs), nil
	}
	defer func() { podLogs = orig }()
	wait := func() error {
		return WaitForInstaller(context.Background(), fc.c, WaitOptions{
			What: "the host settings", Timeout: 300 * time.Millisecond, Interval: 20 * time.Millisecond, Since: time.Now(),
			Done: func(context.Context) (bool, string, error) { return false, "status.multicluster.status is unset", nil },
		}, nil)
	}

	// An old failure with no run start in the window is not taken for this run's.
	logs = "Task 'multicluster' failed:\n"
	var te *InstallerTimeoutError
	if err := wait(); !errors.As(err, &te) {
		t.Fatalf("stale failure: %v", err)
	}
	if gotSince == nil {
		t.Error("logs read without SinceTime")
	}
	mustContain(t, te.Error(), "installer: ks-installer failed (task multicluster); pod ks-installer-abc Running, ready")

	logs = "Start installing multicluster\nTask 'multicluster' failed:\n{\"msg\": \"x\"}\n"
	start := time.Now()
	err := wait()
	var fe *InstallerFailedError
	if !errors.As(err, &fe) || fe.Task != "multicluster" {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 250*time.Millisecond {
		t.Error("failure not reported before the timeout")
	}
	mustContain(t, err.Error(), `ks-installer failed at task "multicluster"`, "kubectl logs -n kubesphere-system -l app=ks-installer --context test-host")
}
