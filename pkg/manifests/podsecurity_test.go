package manifests

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// restrictedViolations lists what the Pod Security Standard "restricted" refuses in spec
// (the fields ks-mc's pods could get wrong; the e2e test asks the real admission).
func restrictedViolations(spec *corev1.PodSpec) []string {
	var out []string
	for _, c := range spec.Containers {
		sc := c.SecurityContext
		if sc == nil {
			out = append(out, c.Name+": no securityContext")
			continue
		}
		nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (spec.SecurityContext != nil && spec.SecurityContext.RunAsNonRoot != nil && *spec.SecurityContext.RunAsNonRoot)
		if !nonRoot {
			out = append(out, c.Name+": runAsNonRoot")
		}
		seccomp := (sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault) ||
			(spec.SecurityContext != nil && spec.SecurityContext.SeccompProfile != nil && spec.SecurityContext.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault)
		if !seccomp {
			out = append(out, c.Name+": seccompProfile RuntimeDefault")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			out = append(out, c.Name+": allowPrivilegeEscalation false")
		}
		if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0 {
			out = append(out, c.Name+": capabilities drop ALL")
		}
	}
	return out
}

func TestRenderedPodsRestricted(t *testing.T) {
	proxy, err := ProxyDeployment(testProxyValues())
	if err != nil {
		t.Fatal(err)
	}
	if v := restrictedViolations(&proxy.Spec.Template.Spec); len(v) > 0 {
		t.Errorf("proxy: %s", strings.Join(v, ", "))
	}
	objs, err := RenderAgent(kubesphere.TunnelKsMc, AgentValues{ClusterName: "m", Token: "t0k3n-long-enough", ProxyServer: "https://1.2.3.4:8080", CACertHash: "sha256:" + strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[1].Object, &d); err != nil {
		t.Fatal(err)
	}
	if v := restrictedViolations(&d.Spec.Template.Spec); len(v) > 0 {
		t.Errorf("ks-mc agent: %s", strings.Join(v, ", "))
	}
}
