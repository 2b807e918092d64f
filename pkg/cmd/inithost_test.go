package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

const cmdTestCC = `apiVersion: installer.kubesphere.io/v1alpha1
kind: ClusterConfiguration
metadata: {name: ks-installer, namespace: kubesphere-system}
spec:
  authentication: {jwtSecret: ""}
  unknownSection: {keep: [1, 2]}
  multicluster: {clusterRole: ROLE}
status:
  core: {status: enabled, version: v3.4.1}
`

const cmdTestConfig = `authentication:
  jwtSecret: "s3cretJWTvalueNEVERprinted0123456"
multicluster:
  clusterRole: ROLE
  enable: ENABLE
`

type cmdCluster struct {
	kube *fake.Clientset
	dyn  *dynamicfake.FakeDynamicClient
}

func newCmdCluster(t *testing.T, role string, finished bool, extra ...runtime.Object) *cmdCluster {
	t.Helper()
	cc := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(strings.Replace(cmdTestCC, "ROLE", role, 1)), &cc.Object); err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("ROLE", role, "ENABLE", map[bool]string{true: "true", false: "false"}[role == "host"]).Replace(cmdTestConfig)
	if finished {
		_ = unstructured.SetNestedField(cc.Object, "http://10.0.0.1:31234", "spec", "multicluster", "proxyPublishAddress")
		_ = unstructured.SetNestedField(cc.Object, "enabled", "status", "multicluster", "status")
		cfg += "  proxyPublishAddress: http://10.0.0.1:31234\n"
	}
	one := int32(1)
	dep := func(name string) *appsv1.Deployment {
		l := map[string]string{"app": name}
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kubesphere-system"},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: l},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: l}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "kubesphere/" + name}}}}},
			Status: appsv1.DeploymentStatus{Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}}
	}
	objs := []runtime.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kubesphere-config", Namespace: "kubesphere-system"}, Data: map[string]string{"kubesphere.yaml": cfg}},
		dep("ks-apiserver"),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}}}},
	}
	if finished {
		objs = append(objs, dep("tower"), pendingTower())
	}
	objs = append(objs, extra...)
	c := &cmdCluster{kube: fake.NewClientset(objs...)}
	c.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList"}, cc)
	c.kube.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		r.Status.Allowed = true
		return true, r, nil
	})
	return c
}

func pendingTower() *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "tower", Namespace: "kubesphere-system"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
			Ports: []corev1.ServicePort{{Port: 8080, TargetPort: intstr.FromInt32(8080), NodePort: 31234}}}}
}

func (c *cmdCluster) mutations() []string {
	var out []string
	for _, a := range append(c.kube.Actions(), c.dyn.Actions()...) {
		switch a.GetVerb() {
		case "get", "list", "watch":
			continue
		}
		if a.GetResource().Resource != "selfsubjectaccessreviews" {
			out = append(out, a.GetVerb()+" "+a.GetResource().Resource)
		}
	}
	return out
}

func (c *cmdCluster) role(t *testing.T) string {
	u, err := c.dyn.Resource(kubesphere.ClusterConfigurationGVR).Namespace("kubesphere-system").Get(t.Context(), "ks-installer", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, _, _ := unstructured.NestedString(u.Object, "spec", "multicluster", "clusterRole")
	return r
}

type cmdRun struct {
	stdout, stderr string
	err            error
	clientsBuilt   int
}

func runInitHost(t *testing.T, c *cmdCluster, tty bool, p Prompter, args ...string) cmdRun {
	t.Helper()
	var out, errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	f := &Factory{ConfigFlags: genericclioptions.NewConfigFlags(true), Streams: streams}
	o := NewInitHostOptions(streams)
	o.TTY = &tty
	o.Prompter = p
	r := cmdRun{}
	f.Clients = func(Selection) (*installer.Clients, error) {
		r.clientsBuilt++
		return &installer.Clients{Kube: c.kube, Dynamic: c.dyn, Context: "test-host"}, nil
	}
	cmd := newCmdInitHost(f, o)
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	r.err = cmd.Execute()
	r.stdout, r.stderr = out.String(), errOut.String()
	if strings.Contains(r.stdout+r.stderr, "s3cretJWTvalueNEVERprinted") {
		t.Errorf("jwtSecret printed")
	}
	return r
}

func TestInitHostFlagValidation(t *testing.T) {
	c := newCmdCluster(t, "none", false)
	for args, frag := range map[string]string{
		"--tunnel=wireguard":                             `--tunnel must be "tower" or "ks-mc"`,
		"--proxy-image=x:1":                              "--proxy-image is only used with --tunnel=ks-mc",
		"--proxy-publish-address=10.0.0.1:31234":         "--proxy-publish-address: proxy address \"10.0.0.1:31234\" has no scheme",
		"--dry-run=sometimes":                            "--dry-run",
		"-o=table":                                       "unsupported output format",
		"--timeout=0s":                                   "--timeout must be positive",
		"--allow-plaintext-agents":                       "--allow-plaintext-agents is only used with --tunnel=ks-mc",
		"--tunnel=ks-mc --proxy-image= --dry-run=client": "",
	} {
		r := runInitHost(t, c, false, nil, strings.Fields(args)...)
		if frag == "" {
			continue
		}
		if r.err == nil || !strings.Contains(r.err.Error(), frag) {
			t.Errorf("%s: err %v, want %q", args, r.err, frag)
		}
		if r.clientsBuilt != 0 {
			t.Errorf("%s: contacted the cluster before validating flags", args)
		}
	}
	if m := c.mutations(); len(m) != 0 {
		t.Errorf("mutations %v", m)
	}
}

func TestInitHostNonTTYPendingNamesFlagAndChangesNothing(t *testing.T) {
	c := newCmdCluster(t, "none", false, pendingTower())
	r := runInitHost(t, c, false, &FakePrompter{})
	var missing *MissingAnswerError
	if !errors.As(r.err, &missing) || missing.Flag != "--proxy-publish-address" {
		t.Fatalf("err = %v", r.err)
	}
	msg := r.err.Error()
	for _, want := range []string{"no terminal to ask on: pass --proxy-publish-address=http://HOST:PORT", "<pending>", "http://10.0.0.1:31234  (node n1 InternalIP, NodePort 31234)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if !strings.Contains(r.stderr, "[warn] Service kubesphere-system/tower has no external address") || !strings.Contains(r.stderr, "[ok] cluster role: none") {
		t.Errorf("preflight not printed:\n%s", r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("stdout %q", r.stdout)
	}
	if m := c.mutations(); len(m) != 0 || c.role(t) != "none" {
		t.Errorf("changed: %v role %s", m, c.role(t))
	}
}

// With --tunnel=ks-mc the advice and the suggestions are https:// (the proxy refuses plaintext
// agents).
func TestInitHostNonTTYPendingKsMcSuggestsHTTPS(t *testing.T) {
	c := newCmdCluster(t, "none", false, pendingTower())
	r := runInitHost(t, c, false, &FakePrompter{}, "--tunnel=ks-mc", "--proxy-image=ghcr.io/ks-mc/ks-mc:v9.9.9")
	var missing *MissingAnswerError
	if !errors.As(r.err, &missing) {
		t.Fatalf("err = %v", r.err)
	}
	msg := r.err.Error()
	for _, want := range []string{"pass --proxy-publish-address=https://HOST:PORT", "https://10.0.0.1:31234  (node n1 InternalIP, NodePort 31234)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if !strings.Contains(r.stderr, "pass --proxy-publish-address=https://HOST:PORT or answer the prompt") {
		t.Errorf("preflight advice not https:\n%s", r.stderr)
	}
	if m := c.mutations(); len(m) != 0 || c.role(t) != "none" {
		t.Errorf("changed: %v role %s", m, c.role(t))
	}
}

func TestInitHostTTYPromptsWithCandidates(t *testing.T) {
	c := newCmdCluster(t, "none", false, pendingTower())
	p := &FakePrompter{Answers: []any{"http://10.0.0.1:31234"}}
	r := runInitHost(t, c, true, p, "--dry-run")
	if r.err != nil {
		t.Fatalf("%v\n%s", r.err, r.stderr)
	}
	if len(p.Selects) != 1 {
		t.Fatalf("asked %v", p.Asked)
	}
	q := p.Selects[0]
	if len(q.Options) != 1 || q.Options[0].Value != "http://10.0.0.1:31234" || q.Other == "" || !strings.Contains(q.Message, "NodePort 31234") {
		t.Errorf("question %+v", q)
	}
	if q.Validate("10.0.0.1") == nil || q.Validate("http://10.0.0.1:1") != nil {
		t.Error("question does not validate addresses")
	}
	// Bare --dry-run is client: the patch is printed, nothing is sent.
	for _, want := range []string{"# ClusterConfiguration kubesphere-system/ks-installer: merge-patch", "clusterRole: host", "proxyPublishAddress: http://10.0.0.1:31234", "kubectl.kubernetes.io/restartedAt"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "dry run (client): nothing was changed") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if m := c.mutations(); len(m) != 0 {
		t.Errorf("dry run changed %v", m)
	}
}

func TestInitHostTTYFreeEntry(t *testing.T) {
	c := newCmdCluster(t, "none", false, pendingTower())
	p := &FakePrompter{Answers: []any{"https://proxy.example.com:443"}}
	r := runInitHost(t, c, true, p, "--dry-run=client", "-o", "json")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var res installer.HostResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	if res.ProxyPublishAddress != "https://proxy.example.com:443" || res.AddressSource != "answer" || res.ClusterRole != "host" || res.DryRun != "client" || !res.Changed {
		t.Errorf("result %+v", res)
	}
	patch, _ := json.Marshal(res.Changes[0].Patch)
	if string(patch) != `{"spec":{"multicluster":{"clusterRole":"host","proxyPublishAddress":"https://proxy.example.com:443"}}}` {
		t.Errorf("patch %s", patch)
	}
	// An invalid typed address is refused.
	p = &FakePrompter{Answers: []any{"proxy.example.com"}}
	r = runInitHost(t, c, true, p, "--dry-run=client")
	if r.err == nil || !strings.Contains(r.err.Error(), "no scheme") {
		t.Errorf("invalid answer: %v", r.err)
	}
}

func TestInitHostFinishedHostIsNoOp(t *testing.T) {
	c := newCmdCluster(t, "host", true)
	r := runInitHost(t, c, false, nil)
	if r.err != nil {
		t.Fatalf("%v\n%s", r.err, r.stderr)
	}
	for _, want := range []string{`Cluster "test-host" is a KubeSphere multi-cluster host (KubeSphere v3.4.1).`, "proxy address: http://10.0.0.1:31234 (already published)", "changes:       none", "kubectl ks-mc join --context <member> --host-context test-host"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "[ok] cluster role: host already") || !strings.Contains(r.stderr, "warning: the proxy did not answer") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if m := c.mutations(); len(m) != 0 {
		t.Errorf("re-run changed %v", m)
	}
	// -o yaml gives the machine-readable result.
	r = runInitHost(t, c, false, nil, "-o", "yaml")
	var res map[string]any
	if err := yaml.Unmarshal([]byte(r.stdout), &res); err != nil || res["clusterRole"] != "host" || res["changed"] != false || res["tunnel"] != "tower" {
		t.Errorf("yaml result %v (%v):\n%s", res, err, r.stdout)
	}
}

func TestInitHostMemberRefused(t *testing.T) {
	c := newCmdCluster(t, "member", false)
	r := runInitHost(t, c, false, nil)
	var pe *installer.PreflightError
	if !errors.As(r.err, &pe) {
		t.Fatalf("err = %v", r.err)
	}
	if !strings.Contains(r.stderr, "[error] cluster role is member") || !strings.Contains(r.stderr, "[ok] cluster of context test-host is reachable") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if !strings.Contains(r.err.Error(), "--force") || !strings.Contains(r.err.Error(), "nothing was changed") {
		t.Errorf("err %v", r.err)
	}
	if m := c.mutations(); len(m) != 0 || c.role(t) != "member" {
		t.Errorf("changed %v", m)
	}
}

func TestProgressReporter(t *testing.T) {
	var b bytes.Buffer
	r := newProgressReporter(&b, false)
	r.Progress("waiting for ks-installer: unset (10s left)")
	r.Progress("waiting for ks-installer: unset (8s left)")
	r.Progress("waiting for ks-installer: enabled (6s left)")
	r.Step("done")
	r.Warn("careful")
	r.Close()
	want := "waiting for ks-installer: unset (10s left)\nwaiting for ks-installer: enabled (6s left)\ndone\nwarning: careful\n"
	if b.String() != want {
		t.Errorf("plain output %q, want %q", b.String(), want)
	}
	if strings.Contains(b.String(), "\r") {
		t.Error("control characters without a terminal")
	}

	var tb bytes.Buffer
	tr := newProgressReporter(&tb, true)
	tr.Progress("working")
	tr.Pause()
	tr.Resume()
	tr.Step("finished")
	tr.Close()
	out := tb.String()
	if !strings.Contains(out, "\r\033[K") || !strings.Contains(out, "working") || !strings.HasSuffix(out, "finished\n") {
		t.Errorf("tty output %q", out)
	}
}

func TestMissingAnswerErrorAndFakePrompter(t *testing.T) {
	e := &MissingAnswerError{Flag: "--name", Reason: "the cluster name is needed"}
	if e.Error() != "the cluster name is needed, and no terminal to ask on: pass --name" {
		t.Errorf("%q", e.Error())
	}
	p := &FakePrompter{Answers: []any{true, "x"}}
	if ok, err := p.Confirm("go?", false); err != nil || !ok {
		t.Error("confirm")
	}
	if _, err := p.Select(SelectQuestion{Message: "pick", Options: []Option{{Value: "a"}}}); err == nil {
		t.Error("non-option accepted without free entry")
	}
	if _, err := p.Input(InputQuestion{Message: "more?"}); err == nil {
		t.Error("unscripted question answered")
	}
}

func TestInitHostExplain(t *testing.T) {
	o := NewInitHostOptions(genericiooptions.IOStreams{})
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	err := o.explain(canceled, context.Background(), context.Canceled)
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != 130 || !strings.Contains(err.Error(), "re-running the same init-host command completes") {
		t.Errorf("interrupt: %v", err)
	}
	err = o.explain(context.Background(), context.Background(), &installer.InstallerTimeoutError{What: "x", LogsCommand: "kubectl logs"})
	if !strings.Contains(err.Error(), "re-run init-host: it continues from the current state") {
		t.Errorf("timeout advice: %v", err)
	}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments"}, "ks-apiserver", errors.New("no"))
	if err := o.explain(context.Background(), context.Background(), forbidden); !strings.Contains(err.Error(), "kubectl auth can-i --list -n kubesphere-system") {
		t.Errorf("forbidden advice: %v", err)
	}
}
