//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// TestRenderedPodsPassRestricted: the rendered proxy and ks-mc agent pods are admitted by the
// sandbox's real kube-apiserver (PodSecurity admission, on by default) in a namespace that
// enforces the "restricted" Pod Security Standard, and a non-compliant pod is refused there, so
// the check can fail. Server-side dry run: admission runs in full, nothing is persisted.
func TestRenderedPodsPassRestricted(t *testing.T) {
	s := sharedSandbox(t)
	cs := kube(t, s.Cluster("host"))
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "ksmc-restricted-",
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}}
	ns, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })

	eventually(t, time.Minute, "the new namespace's default ServiceAccount", func() error {
		_, err := cs.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err
	})

	proxy, err := manifests.ProxyDeployment(manifests.DefaultProxyValues())
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifests.RenderAgent(kubesphere.TunnelKsMc, manifests.AgentValues{ClusterName: "member1", Token: "e2e-not-a-real-token",
		ProxyServer: "https://192.0.2.1:8080", CACertHash: "sha256:" + strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	var agent appsv1.Deployment
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &agent); err != nil {
				t.Fatal(err)
			}
		}
	}
	if agent.Name == "" {
		t.Fatal("no agent Deployment rendered")
	}
	pod := func(name string, spec corev1.PodSpec) *corev1.Pod {
		spec.ServiceAccountName = "" // the namespace is new: the default ServiceAccount
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns.Name}, Spec: spec}
	}
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	for _, d := range []*appsv1.Deployment{proxy, &agent} {
		p := pod(d.Name, *d.Spec.Template.Spec.DeepCopy())
		if _, err := cs.CoreV1().Pods(ns.Name).Create(ctx, p, dry); err != nil {
			t.Errorf("the rendered %s pod is refused under restricted: %v", d.Name, err)
		}
		// The Deployment itself is valid there too.
		d = d.DeepCopy()
		d.Namespace, d.ResourceVersion = ns.Name, ""
		if _, err := cs.AppsV1().Deployments(ns.Name).Create(ctx, d, dry); err != nil {
			t.Errorf("the rendered %s Deployment: %v", d.Name, err)
		}
	}
	// A non-compliant pod (escalation allowed, no seccomp profile) is refused: the check can fail.
	bad := pod("non-compliant", *agent.Spec.Template.Spec.DeepCopy())
	yes := true
	bad.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = &yes
	bad.Spec.Containers[0].SecurityContext.SeccompProfile = nil
	_, err = cs.CoreV1().Pods(ns.Name).Create(ctx, bad, dry)
	if err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
		t.Fatalf("a non-compliant pod was not refused by PodSecurity admission: %v", err)
	}
}
