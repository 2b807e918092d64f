package installer

import (
	"context"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// ProxyUpToDate reports whether the tower Deployment already runs the rendered proxy: the rendered
// pod spec is a subset of the live one (server defaults aside), with a single container, no command
// and no volumes left over from Tower, the pod labels present and the same strategy.
func ProxyUpToDate(live, want *appsv1.Deployment) bool {
	ls, ws := &live.Spec.Template.Spec, &want.Spec.Template.Spec
	if len(ls.Containers) != len(ws.Containers) || len(ls.InitContainers) != 0 || len(ls.Volumes) != len(ws.Volumes) {
		return false
	}
	for i := range ls.Containers {
		if len(ls.Containers[i].Command) != len(ws.Containers[i].Command) ||
			len(ls.Containers[i].VolumeMounts) != len(ws.Containers[i].VolumeMounts) {
			return false
		}
	}
	if !equality.Semantic.DeepDerivative(*ws, *ls) {
		return false
	}
	for k, v := range want.Spec.Template.Labels {
		if live.Spec.Template.Labels[k] != v {
			return false
		}
	}
	if live.Spec.Strategy.Type != want.Spec.Strategy.Type {
		return false
	}
	return live.Spec.Replicas == nil || want.Spec.Replicas == nil || *live.Spec.Replicas == *want.Spec.Replicas
}

// proxyReplacement returns live with its pod template replaced by the rendered one. The selector is
// immutable and kept; pod labels are the union so the selector keeps matching.
func proxyReplacement(live, want *appsv1.Deployment) *appsv1.Deployment {
	out := live.DeepCopy()
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	maps.Copy(out.Labels, want.Labels)
	tmpl := *want.Spec.Template.DeepCopy()
	labels := map[string]string{}
	if live.Spec.Selector != nil {
		maps.Copy(labels, live.Spec.Selector.MatchLabels)
	}
	maps.Copy(labels, tmpl.Labels)
	tmpl.Labels = labels
	// Keep annotations on the live template (for example restartedAt) unless rendered.
	if live.Spec.Template.Annotations != nil {
		ann := maps.Clone(live.Spec.Template.Annotations)
		maps.Copy(ann, tmpl.Annotations)
		tmpl.Annotations = ann
	}
	out.Spec.Template = tmpl
	out.Spec.Strategy = want.Spec.Strategy
	out.Spec.Replicas = want.Spec.Replicas
	return out
}

// EnsureProxyDeployment makes Deployment kubesphere-system/tower run the ks-mc proxy. A live
// Tower Deployment is converted with an update (field manager ks-mc) that replaces its pod template;
// server-side apply alone would keep Tower's command and volumes, owned by the installer. A missing
// Deployment is created with server-side apply. It returns whether something changed (in a dry
// run: would change) and the rendered Deployment.
func EnsureProxyDeployment(ctx context.Context, c *Clients, v manifests.ProxyValues, dry DryRun) (bool, *appsv1.Deployment, error) {
	want, err := manifests.ProxyDeployment(v)
	if err != nil {
		return false, nil, err
	}
	w := Writer{DryRun: dry}
	deps := c.Kube.AppsV1().Deployments(v.Namespace)
	live, err := deps.Get(ctx, v.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(want)
		if err != nil {
			return false, nil, err
		}
		if _, _, err := w.ServerSideApply(ctx, TypedResource(deps), &unstructured.Unstructured{Object: obj}); err != nil {
			return false, nil, fmt.Errorf("apply deployment %s/%s: %w", v.Namespace, v.Name, err)
		}
		return true, want, nil
	case err != nil:
		return false, nil, fmt.Errorf("get deployment %s/%s: %w", v.Namespace, v.Name, err)
	}
	if ProxyUpToDate(live, want) {
		return false, want, nil
	}
	err = w.Send(func(dryRun []string) error {
		_, err := deps.Update(ctx, proxyReplacement(live, want), metav1.UpdateOptions{FieldManager: kubesphere.FieldManager, DryRun: dryRun})
		return err
	})
	if err != nil {
		return false, nil, fmt.Errorf("update deployment %s/%s to the ks-mc proxy: %w", v.Namespace, v.Name, err)
	}
	return true, want, nil
}
