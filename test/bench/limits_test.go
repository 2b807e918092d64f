package main

import (
	"slices"
	"testing"

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
