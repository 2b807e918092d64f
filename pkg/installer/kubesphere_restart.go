package installer

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// RestartPatch is the merge patch "kubectl rollout restart" sends: a new restartedAt annotation on
// the pod template.
func RestartPatch(at time.Time) MergePatch {
	p := MergePatch{}
	p.Set(at.UTC().Format(time.RFC3339), "spec", "template", "metadata", "annotations", RestartedAtAnnotation)
	return p
}

// RestartDeployment restarts a Deployment like "kubectl rollout restart" (field manager ks-mc) and
// returns the patch it sent (or, with DryRunClient, would send).
func RestartDeployment(ctx context.Context, c *Clients, namespace, name string, dry DryRun) (MergePatch, error) {
	p := RestartPatch(time.Now())
	if _, err := (Writer{DryRun: dry}).MergePatch(ctx, Deployments(c, namespace), name, p); err != nil {
		return nil, fmt.Errorf("restart deployment %s/%s: %w", namespace, name, err)
	}
	return p, nil
}

// DeploymentRolledOut reports whether a Deployment finished rolling out and is available, with a
// short description otherwise (the rules of "kubectl rollout status").
func DeploymentRolledOut(d *appsv1.Deployment) (bool, string) {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	st := d.Status
	switch {
	case d.Generation > st.ObservedGeneration:
		return false, "waiting for the deployment spec update to be observed"
	case st.UpdatedReplicas < want:
		return false, fmt.Sprintf("%d of %d updated replicas", st.UpdatedReplicas, want)
	case st.Replicas > st.UpdatedReplicas:
		return false, fmt.Sprintf("%d old replicas pending termination", st.Replicas-st.UpdatedReplicas)
	case st.AvailableReplicas < st.UpdatedReplicas:
		return false, fmt.Sprintf("%d of %d updated replicas available", st.AvailableReplicas, st.UpdatedReplicas)
	}
	for _, cond := range d.Status.Conditions {
		if cond.Type == appsv1.DeploymentProgressing && cond.Reason == "ProgressDeadlineExceeded" {
			return false, "progress deadline exceeded: " + cond.Message
		}
	}
	return true, fmt.Sprintf("%d of %d replicas available", st.AvailableReplicas, want)
}

// RolloutTimeoutError means a Deployment did not roll out in time.
type RolloutTimeoutError struct {
	Namespace, Name, Observed, Context string
	Timeout                            time.Duration
}

func (e *RolloutTimeoutError) Error() string {
	ctxFlag := ""
	if e.Context != "" {
		ctxFlag = " --context " + e.Context
	}
	return fmt.Sprintf("timed out after %s waiting for deployment %s/%s to roll out: %s\nsee: kubectl -n %s rollout status deployment %s%s; kubectl -n %s get pods%s",
		e.Timeout, e.Namespace, e.Name, e.Observed, e.Namespace, e.Name, ctxFlag, e.Namespace, ctxFlag)
}

// WaitForRollout waits until the Deployment is rolled out and available.
func WaitForRollout(ctx context.Context, c *Clients, namespace, name string, timeout time.Duration, rep Reporter) error {
	return WaitForRolloutUntil(ctx, c, namespace, name, time.Now().Add(timeout), timeout, rep)
}

// WaitForRolloutUntil is WaitForRollout with an absolute deadline; timeout is the value named in
// the error.
func WaitForRolloutUntil(ctx context.Context, c *Clients, namespace, name string, deadline time.Time, timeout time.Duration, rep Reporter) error {
	rep = reporterOrNop(rep)
	observed := ""
	for {
		d, err := c.Kube.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			var ok bool
			ok, observed = DeploymentRolledOut(d)
			if ok {
				return nil
			}
		case apierrors.IsNotFound(err):
			observed = "deployment not found"
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			observed = err.Error()
		}
		rep.Progress(fmt.Sprintf("waiting for deployment %s/%s to roll out: %s", namespace, name, observed))
		if time.Now().After(deadline) {
			return &RolloutTimeoutError{Namespace: namespace, Name: name, Observed: observed, Timeout: timeout, Context: c.Context}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// LastUpdateBy returns when the given field manager last changed the object (from managedFields,
// server clock, second precision), or the zero time.
func LastUpdateBy(obj metav1.Object, manager string) time.Time {
	var t time.Time
	for _, mf := range obj.GetManagedFields() {
		if mf.Manager == manager && mf.Time != nil && mf.Time.After(t) {
			t = mf.Time.Time
		}
	}
	return t
}

// NeedsAPIServerRestart reports whether ks-apiserver should be restarted because ks-mc changed the
// ClusterConfiguration after it last restarted ks-apiserver. Both times come from the server's
// managedFields, so an interrupted run (patched but not restarted) is detected by the next run,
// and a finished one is not restarted again.
func NeedsAPIServerRestart(ctx context.Context, c *Clients, cc *ClusterConfiguration) (bool, string, error) {
	changed := LastUpdateBy(cc.Object, kubesphere.FieldManager)
	if changed.IsZero() {
		return false, "ks-mc never changed the ClusterConfiguration", nil
	}
	d, err := c.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.APIServerName, metav1.GetOptions{})
	if err != nil {
		return false, "", fmt.Errorf("get deployment %s/%s: %w", kubesphere.Namespace, kubesphere.APIServerName, err)
	}
	restarted := LastUpdateBy(d, kubesphere.FieldManager)
	if restarted.Before(changed) {
		return true, fmt.Sprintf("ClusterConfiguration changed by ks-mc at %s, ks-apiserver last restarted by ks-mc %s",
			changed.UTC().Format(time.RFC3339), timeOrNever(restarted)), nil
	}
	return false, "ks-apiserver was restarted after the last change", nil
}

func timeOrNever(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return "at " + t.UTC().Format(time.RFC3339)
}
