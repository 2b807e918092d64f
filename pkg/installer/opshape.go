package installer

// The operation shape. Every flow that changes clusters (init-host: Host, join: Join, unjoin:
// Unjoiner, and the coming migrate and before-install) has the same two halves, like kind's actions
// or clusteradm's preflight package:
//
//	plan := op.Preflight(ctx)   // reads only: every finding, and the state Apply starts from
//	res, err := op.Apply(ctx, plan)
//
// Preflight never changes anything and reports all findings together (a Plan); Apply refuses a
// plan with a blocking finding and then runs small named steps. Every step that writes goes
// through one Writer (the only place that knows dry-run none|client|server) and records what it
// did in one ChangeLog. Read-only flows (diagnose, status) have a Preflight-like half only.

import (
	"context"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// Operation is the shape of a flow that changes clusters. S is the state its Preflight learned;
// R its machine-readable result.
type Operation[S, R any] interface {
	// Preflight reads both sides and returns every finding; it changes nothing.
	Preflight(ctx context.Context) *Plan[S]
	// Apply performs the plan's steps; it refuses a plan whose Err is not nil.
	Apply(ctx context.Context, plan *Plan[S]) (R, error)
}

// Plan is what a Preflight found: the checks (embedded, so plan.OK/Warn/Error/HasErrors work on
// it) and, when nothing blocks, the state Apply starts from.
type Plan[S any] struct {
	Preflight
	// State is what Apply needs; its zero value when a finding blocks.
	State S
	// blocked is a blocking problem that is no check line (unjoin's: one error that says what to
	// pass); Err returns it first.
	blocked error
}

// Findings returns the checks of the plan.
func (p *Plan[S]) Findings() *Preflight { return &p.Preflight }

// Block marks the plan as not appliable with err (kept verbatim).
func (p *Plan[S]) Block(err error) { p.blocked = err }

// Err is nil when the plan may be applied: else the blocking error, or a *PreflightError naming
// every failed check.
func (p *Plan[S]) Err() error {
	if p == nil {
		return fmt.Errorf("run preflight first")
	}
	if p.blocked != nil {
		return p.blocked
	}
	return p.Preflight.Err()
}

// defaultDuration sets *d to def when it is not positive (the options of an operation).
func defaultDuration(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Change is one change a flow made (or, in a dry run, would make).
type Change struct {
	Object  string         `json:"object"`
	Action  string         `json:"action"`
	Summary string         `json:"summary"`
	Patch   map[string]any `json:"patch,omitempty"`
	// Manifest is a rendered object (the proxy Deployment).
	Manifest any `json:"manifest,omitempty"`
}

// ChangeLog is the one record of what a flow changed. It appends to the result's Changes (so a
// result returned with an error lists what was done until then) and, with a Reporter, announces
// each change as a step: "patch member ClusterConfiguration …: set …", "would delete …" in a dry
// run. init-host announces its own steps and passes no Reporter.
type ChangeLog struct {
	changes *[]Change
	dry     DryRun
	rep     Reporter
}

// NewChangeLog records into *into (which it initialises to an empty list). rep may be nil.
func NewChangeLog(into *[]Change, dry DryRun, rep Reporter) *ChangeLog {
	if *into == nil {
		*into = []Change{}
	}
	return &ChangeLog{changes: into, dry: dry, rep: rep}
}

// Record appends c and announces it.
func (l *ChangeLog) Record(c Change) {
	*l.changes = append(*l.changes, c)
	if l.rep == nil {
		return
	}
	verb := c.Action
	if l.dry.Enabled() {
		verb = "would " + c.Action
	}
	l.rep.Step(fmt.Sprintf("%s %s: %s", verb, c.Object, c.Summary))
}

// Changed reports whether anything was recorded.
func (l *ChangeLog) Changed() bool { return len(*l.changes) > 0 }

// Writer is the one place that sends changes to a cluster and honours dry-run: with DryRunClient
// nothing is sent (each method returns as if it had succeeded, without an object), with
// DryRunServer every request carries dryRun=All, with DryRunNone it is sent. Every write carries
// field manager ks-mc.
type Writer struct {
	DryRun DryRun
}

// Sends reports whether requests reach the API server (none or server dry-run).
func (w Writer) Sends() bool { return w.DryRun != DryRunClient }

// Resource is one kind of object on one cluster (and namespace): see Deployments, Secrets,
// DynamicResource.
type Resource interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (metav1.Object, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions) (metav1.Object, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

// ServerSideApply applies obj (forced, field manager ks-mc) and says whether it was created,
// updated or left unchanged (""). With DryRunClient it sends nothing and returns (nil, "apply").
func (w Writer) ServerSideApply(ctx context.Context, r Resource, obj *unstructured.Unstructured) (metav1.Object, string, error) {
	if !w.Sends() {
		return nil, "apply", nil
	}
	data, err := obj.MarshalJSON()
	if err != nil {
		return nil, "", err
	}
	before, err := r.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, "", err
	}
	exists := err == nil
	force := true
	after, err := r.Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: kubesphere.FieldManager, Force: &force, DryRun: w.DryRun.apiDryRun()})
	if err != nil {
		return nil, "", err
	}
	switch {
	case !exists:
		return after, "create", nil
	case before.GetResourceVersion() != after.GetResourceVersion():
		return after, "update", nil
	}
	return after, "", nil
}

// MergePatch sends a JSON merge patch (field manager ks-mc). An empty patch sends nothing.
func (w Writer) MergePatch(ctx context.Context, r Resource, name string, p MergePatch) (metav1.Object, error) {
	if p.Empty() || !w.Sends() {
		return nil, nil
	}
	data, err := p.JSON()
	if err != nil {
		return nil, err
	}
	return r.Patch(ctx, name, types.MergePatchType, data, metav1.PatchOptions{FieldManager: kubesphere.FieldManager, DryRun: w.DryRun.apiDryRun()})
}

// Delete deletes name; an object that is gone already is no error.
func (w Writer) Delete(ctx context.Context, r Resource, name string, opts metav1.DeleteOptions) error {
	if !w.Sends() {
		return nil
	}
	opts.DryRun = w.DryRun.apiDryRun()
	if err := r.Delete(ctx, name, opts); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// Send runs a write that needs a typed call of its own (an Update, a Create) with the dryRun
// field to put into its options; with DryRunClient it is not run.
func (w Writer) Send(write func(dryRun []string) error) error {
	if !w.Sends() {
		return nil
	}
	return write(w.DryRun.apiDryRun())
}

// typedClient is what every client-go typed client of a kind offers (DeploymentInterface,
// SecretInterface, …).
type typedClient[T metav1.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

type typedResource[T metav1.Object] struct{ c typedClient[T] }

func (r typedResource[T]) Get(ctx context.Context, name string, opts metav1.GetOptions) (metav1.Object, error) {
	return r.c.Get(ctx, name, opts)
}

func (r typedResource[T]) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions) (metav1.Object, error) {
	return r.c.Patch(ctx, name, pt, data, opts)
}

func (r typedResource[T]) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return r.c.Delete(ctx, name, opts)
}

// TypedResource wraps a client-go typed client (c.Kube.AppsV1().Deployments(ns), …).
func TypedResource[T metav1.Object](c typedClient[T]) Resource { return typedResource[T]{c} }

// Deployments are the Deployments of namespace ns.
func Deployments(c *Clients, ns string) Resource {
	return TypedResource(c.Kube.AppsV1().Deployments(ns))
}

// Secrets are the Secrets of namespace ns.
func Secrets(c *Clients, ns string) Resource {
	return TypedResource(c.Kube.CoreV1().Secrets(ns))
}

type dynamicResource struct {
	c   *Clients
	gvr schema.GroupVersionResource
	ns  string
}

// DynamicResource is a resource read through the dynamic client (Clusters, ClusterConfigurations);
// ns is "" for a cluster-scoped one.
func DynamicResource(c *Clients, gvr schema.GroupVersionResource, ns string) Resource {
	return dynamicResource{c: c, gvr: gvr, ns: ns}
}

func (r dynamicResource) Get(ctx context.Context, name string, opts metav1.GetOptions) (metav1.Object, error) {
	return r.c.Dynamic.Resource(r.gvr).Namespace(r.ns).Get(ctx, name, opts)
}

func (r dynamicResource) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions) (metav1.Object, error) {
	return r.c.Dynamic.Resource(r.gvr).Namespace(r.ns).Patch(ctx, name, pt, data, opts)
}

func (r dynamicResource) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return r.c.Dynamic.Resource(r.gvr).Namespace(r.ns).Delete(ctx, name, opts)
}
