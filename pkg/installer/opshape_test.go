package installer

import (
	"context"
	"errors"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestWriterHonoursDryRun: the Writer is the one place that knows dry-run: client sends nothing,
// server sends every write with dryRun=All, none sends it for real; every write carries field
// manager ks-mc, a delete of a missing object is no error.
func TestWriterHonoursDryRun(t *testing.T) {
	ctx := context.Background()
	secret := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "s", "namespace": "ns"},
	}}
	for _, dry := range []DryRun{DryRunClient, DryRunServer, DryRunNone} {
		kube := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "old", Namespace: "ns"}})
		c := &Clients{Kube: kube}
		w := Writer{DryRun: dry}
		r := Secrets(c, "ns")
		if _, _, err := w.ServerSideApply(ctx, r, secret); err != nil {
			t.Fatalf("%s: apply: %v", dry, err)
		}
		p := MergePatch{}
		p.Set("v", "metadata", "labels", "k")
		if _, err := w.MergePatch(ctx, r, "old", p); err != nil {
			t.Fatalf("%s: merge patch: %v", dry, err)
		}
		if err := w.Delete(ctx, r, "missing", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("%s: delete of a missing object: %v", dry, err)
		}
		sent := false
		if err := w.Send(func(d []string) error { sent = true; return nil }); err != nil || sent != (dry != DryRunClient) {
			t.Fatalf("%s: Send ran %v, err %v", dry, sent, err)
		}
		var writes []k8stesting.Action
		for _, a := range kube.Actions() {
			if a.GetVerb() != "get" {
				writes = append(writes, a)
			}
		}
		if dry == DryRunClient {
			if len(kube.Actions()) != 0 {
				t.Fatalf("client dry run sent %v", kube.Actions())
			}
			continue
		}
		if len(writes) != 3 {
			t.Fatalf("%s: writes %v, want apply, merge patch, delete", dry, writes)
		}
		for _, a := range writes {
			var got []string
			switch a := a.(type) {
			case k8stesting.PatchActionImpl:
				got = a.PatchOptions.DryRun
				if a.PatchOptions.FieldManager != "ks-mc" {
					t.Errorf("%s: %s without field manager ks-mc", dry, a.GetVerb())
				}
			case k8stesting.DeleteActionImpl:
				got = a.DeleteOptions.DryRun
			default:
				t.Fatalf("%s: unexpected write %T", dry, a)
			}
			if want := dry.apiDryRun(); !slices.Equal(got, want) {
				t.Errorf("%s: %s sent dryRun %v, want %v", dry, a.GetVerb(), got, want)
			}
		}
	}
}

// TestChangeLogAndPlan: the change log fills the result's list and announces "would …" in a dry
// run; a plan refuses Apply with its blocking error or failed checks.
func TestChangeLogAndPlan(t *testing.T) {
	var changes []Change
	rec := &recorder{}
	log := NewChangeLog(&changes, DryRunClient, rec)
	if changes == nil || log.Changed() {
		t.Fatal("a new log must be an empty, non-nil list")
	}
	log.Record(Change{Object: "member secret ns/s", Action: "delete", Summary: "the agent token"})
	if len(changes) != 1 || !log.Changed() || !slices.Contains(rec.steps, "would delete member secret ns/s: the agent token") {
		t.Fatalf("changes %v, steps %v", changes, rec.steps)
	}
	var nilPlan *Plan[int]
	if nilPlan.Err() == nil {
		t.Fatal("a nil plan must be refused")
	}
	plan := &Plan[int]{}
	if plan.Err() != nil {
		t.Fatal("an empty plan is appliable")
	}
	plan.Warn("", "a warning")
	if plan.Err() != nil {
		t.Fatal("a warning does not block")
	}
	plan.Error("pass --x", "an error")
	var pe *PreflightError
	if !errors.As(plan.Err(), &pe) {
		t.Fatalf("failed check: %v", plan.Err())
	}
	blocked := errors.New("pass --name")
	plan.Block(blocked)
	if plan.Err() != blocked {
		t.Fatalf("blocked plan: %v", plan.Err())
	}
}
