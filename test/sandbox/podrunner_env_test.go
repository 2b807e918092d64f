package sandbox

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The sandbox's kubelet stand-in resolves resourceFieldRef as the kubelet does (the ks-mc agent and
// proxy read their memory limit from it).
func TestResourceFieldValue(t *testing.T) {
	c := &corev1.Container{Resources: corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("200M"), corev1.ResourceCPU: resource.MustParse("1500m")},
		Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("100M")},
	}}
	for _, tc := range []struct {
		ref  corev1.ResourceFieldSelector
		want string
	}{
		{corev1.ResourceFieldSelector{Resource: "limits.memory"}, "200000000"},
		{corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1")}, "200000000"},
		{corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}, "191"},
		{corev1.ResourceFieldSelector{Resource: "requests.memory"}, "100000000"},
		{corev1.ResourceFieldSelector{Resource: "limits.cpu"}, "2"},
		{corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1m")}, "1500"},
		{corev1.ResourceFieldSelector{Resource: "requests.cpu"}, "0"},
	} {
		got, err := resourceFieldValue(c, &tc.ref)
		if err != nil || got != tc.want {
			t.Errorf("%s / %s = %q, %v; want %q", tc.ref.Resource, tc.ref.Divisor.String(), got, err, tc.want)
		}
	}
	// No limit: the node's allocatable, never 0.
	if got, err := resourceFieldValue(&corev1.Container{}, &corev1.ResourceFieldSelector{Resource: "limits.memory"}); err != nil || got == "0" || got == "" {
		t.Errorf("limits.memory without a limit = %q, %v; want the node's memory", got, err)
	}
	if _, err := resourceFieldValue(c, &corev1.ResourceFieldSelector{Resource: "limits.ephemeral-storage"}); err == nil {
		t.Error("limits.ephemeral-storage: no error")
	}
}
