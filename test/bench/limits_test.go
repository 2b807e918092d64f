package main

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// The bench runs proxy and agent with the memory environment of their rendered containers.
func TestRenderedMem(t *testing.T) {
	a, p, err := renderedMem()
	if err != nil {
		t.Fatal(err)
	}
	if a.limit != 200_000_000 || a.limitStr != "200M" {
		t.Errorf("agent limit = %d (%s), want 200M as the template renders", a.limit, a.limitStr)
	}
	if p.limit != 512<<20 || p.limitStr != "512Mi" {
		t.Errorf("proxy limit = %d (%s), want 512Mi as the template renders", p.limit, p.limitStr)
	}
	if !slices.Contains(a.env, manifests.MemoryLimitEnv+"=200000000") {
		t.Errorf("agent env %q lacks %s from the downward API", a.env, manifests.MemoryLimitEnv)
	}
	if !slices.Contains(p.env, manifests.MemoryLimitEnv+"=536870912") {
		t.Errorf("proxy env %q lacks %s from the downward API", p.env, manifests.MemoryLimitEnv)
	}
}

// containerEnv resolves the downward API as the kubelet does: bytes, a divisor rounds up.
func TestContainerEnv(t *testing.T) {
	c := corev1.Container{Name: "c",
		Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("200M")},
			Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("100M")}},
		Env: []corev1.EnvVar{
			{Name: "PLAIN", Value: "x"},
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory"}}},
			{Name: "LIMIT_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
			{Name: "REQ", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.memory", Divisor: resource.MustParse("1")}}},
		}}
	env, err := containerEnv(c)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"LIMIT=200000000", "LIMIT_MI=191", "PLAIN=x", "REQ=100000000"}
	if !slices.Equal(env, want) {
		t.Fatalf("env = %q, want %q", env, want)
	}
	c.Env = []corev1.EnvVar{{Name: "CPU", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}}}
	if _, err := containerEnv(c); err == nil {
		t.Fatal("limits.cpu: no error (the bench would start the process without it)")
	}
}
