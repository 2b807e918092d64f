package fakeks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// Installer plays ks-installer: every change of the ClusterConfiguration's spec triggers a run.
type Installer struct {
	Clients *Clients
	Log     io.Writer
	// Poll is how often the CC is read (default 500ms).
	Poll time.Duration

	lastSpec string
}

// Run loops until ctx ends.
func (in *Installer) Run(ctx context.Context) {
	poll := in.Poll
	if poll == 0 {
		poll = 500 * time.Millisecond
	}
	for {
		if err := in.reconcile(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(in.Log, "ks-installer: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(poll):
		}
	}
}

func specHash(cc *unstructured.Unstructured) string {
	spec, _, _ := unstructured.NestedMap(cc.Object, "spec")
	b, _ := json.Marshal(spec)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (in *Installer) reconcile(ctx context.Context) error {
	ccs := in.Clients.Dynamic.Resource(CCGVR).Namespace(Namespace)
	cc, err := ccs.Get(ctx, CCName, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("get ClusterConfiguration: %w", err)
	}
	h := specHash(cc)
	if h == in.lastSpec {
		return nil
	}
	knobs := ReadKnobs(ctx, in.Clients.Kube)
	fmt.Fprintf(in.Log, "ks-installer: Start installing (spec changed)\n")
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(knobs.InstallerDelay):
	}
	// A change that arrived during the run triggers another run, as shell-operator queues it.
	if cur, err := ccs.Get(ctx, CCName, metav1.GetOptions{}); err == nil && specHash(cur) != h {
		return nil
	}
	in.lastSpec = h
	if knobs.InstallerFail {
		fmt.Fprintf(in.Log, "ks-installer: Task 'multicluster' failed: {\"msg\": \"sandbox knob %s is true\"}\n", KnobInstallerFail)
		return nil
	}
	if err := in.run(ctx, cc); err != nil {
		fmt.Fprintf(in.Log, "ks-installer: Task 'ks-core' failed: %v\n", err)
		return err
	}
	fmt.Fprintf(in.Log, "ks-installer: Welcome to KubeSphere! (role %s)\n", role(cc))
	return nil
}

func role(cc *unstructured.Unstructured) string {
	r, _, _ := unstructured.NestedString(cc.Object, "spec", "multicluster", "clusterRole")
	if r == "" {
		return "none"
	}
	return r
}

// run is one installer run for the given ClusterConfiguration.
func (in *Installer) run(ctx context.Context, cc *unstructured.Unstructured) error {
	kube := in.Clients.Kube
	cm, err := kube.CoreV1().ConfigMaps(Namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get configmap %s: %w", ConfigMapName, err)
	}
	rendered, jwtChanged, err := RenderConfig(cm.Data[ConfigKey], cc.Object)
	if err != nil {
		return err
	}
	if rendered != cm.Data[ConfigKey] {
		cm.Data[ConfigKey] = rendered
		if _, err := kube.CoreV1().ConfigMaps(Namespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update configmap %s: %w", ConfigMapName, err)
		}
	}
	if jwtChanged {
		jwt, _, _ := unstructured.NestedString(cc.Object, "spec", "authentication", "jwtSecret")
		_ = kube.CoreV1().Secrets(Namespace).Delete(ctx, SecretName, metav1.DeleteOptions{})
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SecretName, Namespace: Namespace}, StringData: map[string]string{"secret": jwt}}
		if _, err := kube.CoreV1().Secrets(Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("recreate secret %s: %w", SecretName, err)
		}
	}
	now := time.Now().UTC().Format(time.RFC3339)
	if err := in.patchStatus(ctx, map[string]any{"core": map[string]any{"status": "enabled", "enabledTime": now, "version": KubeSphereVer}}); err != nil {
		return err
	}
	mcStatus, _, _ := unstructured.NestedString(cc.Object, "status", "multicluster", "status")
	if role(cc) == "host" && mcStatus != "enabled" {
		if err := in.installTower(ctx); err != nil {
			return err
		}
		if err := in.patchStatus(ctx, map[string]any{"multicluster": map[string]any{"status": "enabled", "enabledTime": now}}); err != nil {
			return err
		}
	}
	return nil
}

func (in *Installer) patchStatus(ctx context.Context, status map[string]any) error {
	b, _ := json.Marshal(map[string]any{"status": status})
	if _, err := in.Clients.Dynamic.Resource(CCGVR).Namespace(Namespace).Patch(ctx, CCName, types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch ClusterConfiguration status: %w", err)
	}
	return nil
}

// installTower applies Tower's Deployment and LoadBalancer Service, as the multicluster task does.
func (in *Installer) installTower(ctx context.Context) error {
	labels := map[string]string{"app": "tower", "app.kubernetes.io/name": "tower"}
	d := deployment("tower", TowerImage, labels)
	c := &d.Spec.Template.Spec.Containers[0]
	c.Command = []string{"proxy", "--ca-cert=/ca/ca.crt", "--ca-key=/ca/ca.key", "--v=3"}
	c.Ports = []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8080)}}}
	c.Resources = corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("512Mi")},
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("100Mi")},
	}
	if err := ensureDeployment(ctx, in.Clients.Kube, d); err != nil {
		return err
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "tower", Namespace: Namespace, Labels: labels},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": "tower"},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := in.Clients.Kube.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service tower: %w", err)
	}
	return nil
}

// RenderConfig re-renders kubesphere.yaml from the CC, the way ks-installer's templates do for the
// keys ks-mc cares about. Unrelated keys are kept. It reports whether the jwtSecret changed.
func RenderConfig(existing string, cc map[string]any) (string, bool, error) {
	cfg := map[string]any{}
	if err := yaml.Unmarshal([]byte(existing), &cfg); err != nil {
		return "", false, fmt.Errorf("parse %s: %w", ConfigKey, err)
	}
	if cfg == nil {
		cfg = map[string]any{}
	}
	spec, _, _ := unstructured.NestedMap(cc, "spec")
	role, _, _ := unstructured.NestedString(spec, "multicluster", "clusterRole")
	if role == "" {
		role = "none"
	}
	jwtChanged := false
	if jwt, _, _ := unstructured.NestedString(spec, "authentication", "jwtSecret"); jwt != "" {
		old, _, _ := unstructured.NestedString(cfg, "authentication", "jwtSecret")
		if old != jwt {
			jwtChanged = true
			_ = unstructured.SetNestedField(cfg, jwt, "authentication", "jwtSecret")
		}
	}
	if role == "member" {
		_ = unstructured.SetNestedField(cfg, int64(0), "authentication", "oauthOptions", "accessTokenMaxAge")
	}
	_ = unstructured.SetNestedField(cfg, role, "multicluster", "clusterRole")
	_ = unstructured.SetNestedField(cfg, role == "host", "multicluster", "enable")
	if addr, _, _ := unstructured.NestedString(spec, "multicluster", "proxyPublishAddress"); addr != "" {
		_ = unstructured.SetNestedField(cfg, addr, "multicluster", "proxyPublishAddress")
	} else {
		unstructured.RemoveNestedField(cfg, "multicluster", "proxyPublishAddress")
	}
	if name, _, _ := unstructured.NestedString(spec, "multicluster", "hostClusterName"); name != "" {
		_ = unstructured.SetNestedField(cfg, name, "multicluster", "hostClusterName")
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return "", false, fmt.Errorf("render %s: %w", ConfigKey, err)
	}
	// Keep the existing text when nothing changed, so a no-op run writes nothing.
	var before map[string]any
	_ = yaml.Unmarshal([]byte(existing), &before)
	if b1, _ := json.Marshal(before); string(b1) == mustJSON(cfg) {
		return existing, false, nil
	}
	return string(out), jwtChanged, nil
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
