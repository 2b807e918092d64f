package installer

import (
	"context"
	"errors"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

func (j *Join) renderCluster(st *joinState) (*unstructured.Unstructured, error) {
	return manifests.RenderCluster(manifests.ClusterValues{
		Name: j.opts.Name, Provider: j.opts.Provider, Description: j.opts.Description, Group: j.opts.Group,
		Region: j.opts.Region, MemberUID: st.memberUID, Labels: j.opts.Labels,
		Annotations: clusterAnnotations(st),
	})
}

// clusterAnnotations: a member on the ks-mc agent gets ks-mc.io/agent-protocol: ks-mc, so the
// proxy never serves a Tower agent for its Cluster (downgrade protection).
func clusterAnnotations(st *joinState) map[string]string {
	if st.tunnel != kubesphere.TunnelKsMc {
		return nil
	}
	return map[string]string{kubesphere.AgentProtocolAnnotation: string(kubesphere.TunnelKsMc)}
}

// subsetOf reports whether every field of want is present with the same value in have.
func subsetOf(want, have any) bool {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return false
		}
		for k, v := range w {
			if !subsetOf(v, h[k]) {
				return false
			}
		}
		return true
	default:
		return sameValue(want, have)
	}
}

func (j *Join) applyCluster(ctx context.Context, st *joinState) (*unstructured.Unstructured, error) {
	want, err := j.renderCluster(st)
	if err != nil {
		return nil, err
	}
	obj := "host Cluster " + j.opts.Name
	if j.host.Context != "" {
		obj = side(j.host, "host") + " Cluster " + j.opts.Name
	}
	j.result.HostObjects = append(j.result.HostObjects, manifests.RedactObject(want))
	if st.existing != nil {
		wantMeta := map[string]any{"labels": want.Object["metadata"].(map[string]any)["labels"]}
		// The member UID annotation is only written on create; the rest must match.
		ann := map[string]any{}
		for k, v := range want.GetAnnotations() {
			if k != kubesphere.MemberUIDAnnotation && k != kubesphere.CreatorAnnotation {
				ann[k] = v
			}
		}
		wantMeta["annotations"] = ann
		if subsetOf(want.Object["spec"], st.existing.Object["spec"]) && subsetOf(wantMeta, st.existing.Object["metadata"]) {
			j.rep.Step(fmt.Sprintf("%s: exists for this member, nothing to change", obj))
			return st.existing, nil
		}
		// Keep ownership limited to what differs: never rewrite the creator or UID annotations.
		md := want.Object["metadata"].(map[string]any)
		md["annotations"] = ann
		if len(ann) == 0 {
			delete(md, "annotations")
		}
	}
	action, summary := "create", "agent connection (proxy), joinFederation"
	if st.existing != nil {
		action, summary = "update", "labels/annotations/spec from the flags"
	}
	j.log.Record(Change{Object: obj, Action: action, Summary: summary})
	got, _, err := j.w.ServerSideApply(ctx, DynamicResource(j.host, kubesphere.ClusterGVR, ""), want)
	if err != nil {
		return nil, fmt.Errorf("apply Cluster %s on the host: %w", j.opts.Name, err)
	}
	if got == nil { // client dry run
		if st.existing != nil {
			return st.existing, nil
		}
		return want, nil
	}
	return got.(*unstructured.Unstructured), nil
}

func (j *Join) applyAgent(ctx context.Context, st *joinState, token string) error {
	objs, err := manifests.RenderAgent(st.tunnel, manifests.AgentValues{
		ClusterName: j.opts.Name, Token: token, ProxyServer: st.proxyAddress, Image: st.agentImage, CACertHash: st.caHash,
		DeploymentName: agentNameFor(st),
	})
	if err != nil {
		return err
	}
	j.result.MemberObjects = append(j.result.MemberObjects, manifests.Redact(objs)...)
	m := side(j.member, "member")
	// Switching tunnels: the old Deployment's command/args belong to another manager; replace it.
	if st.agent != nil && InspectAgent(st.agent).Tunnel != st.tunnel {
		j.log.Record(Change{Object: fmt.Sprintf("%s deployment %s/%s", m, kubesphere.Namespace, st.agent.Name), Action: "delete",
			Summary: fmt.Sprintf("replace the %s agent by the %s agent", InspectAgent(st.agent).Tunnel, st.tunnel)})
		if err := j.w.Delete(ctx, Deployments(j.member, kubesphere.Namespace), st.agent.Name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("member: delete deployment %s/%s: %w", kubesphere.Namespace, st.agent.Name, err)
		}
		st.agent = nil
		st.agentName = kubesphere.AgentName
	}
	for _, o := range objs {
		obj := fmt.Sprintf("%s %s %s/%s", m, strings.ToLower(o.GetKind()), o.GetNamespace(), o.GetName())
		_, action, err := j.w.ServerSideApply(ctx, agentResource(j.member, o), o)
		if err != nil {
			// The error of an apply can quote the object (and so the token): never pass it on verbatim.
			return fmt.Errorf("member: apply %s %s/%s: %s", o.GetKind(), o.GetNamespace(), o.GetName(), manifests.Scrub(apiReason(err), token))
		}
		if action == "" {
			j.rep.Step(obj + ": unchanged")
			continue
		}
		j.log.Record(Change{Object: obj, Action: action, Summary: "server-side apply (field manager ks-mc)"})
	}
	if st.tunnel == kubesphere.TunnelTower {
		// A token Secret left by an earlier bundled agent is no longer used.
		sec, err := j.member.Kube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.AgentTokenSecretName, metav1.GetOptions{})
		if err == nil && sec.Labels[kubesphere.ManagedByLabel] == kubesphere.ManagedByValue {
			j.log.Record(Change{Object: fmt.Sprintf("%s secret %s/%s", m, kubesphere.Namespace, kubesphere.AgentTokenSecretName), Action: "delete", Summary: "no longer used by the Tower agent"})
			_ = j.w.Delete(ctx, Secrets(j.member, kubesphere.Namespace), kubesphere.AgentTokenSecretName, metav1.DeleteOptions{})
		}
	}
	if j.opts.DryRun.Enabled() {
		return nil
	}
	if err := WaitForRollout(ctx, j.member, kubesphere.Namespace, agentNameFor(st), j.remaining(), j.rep); err != nil {
		return fmt.Errorf("member: %w", err)
	}
	j.rep.Step(fmt.Sprintf("%s: agent rolled out", m))
	return nil
}

// agentNameFor is the agent Deployment join renders (kubesphere.AgentName unless migrated).
func agentNameFor(st *joinState) string {
	if st.tunnel == kubesphere.TunnelKsMc && st.agentName != "" {
		return st.agentName
	}
	return kubesphere.AgentName
}

// agentResource is where a rendered agent object goes on the member (a Secret or a Deployment).
func agentResource(c *Clients, o *unstructured.Unstructured) Resource {
	if o.GetKind() == "Secret" {
		return Secrets(c, o.GetNamespace())
	}
	return Deployments(c, o.GetNamespace())
}

// apiReason returns the message of an API error without the object it may echo.
func apiReason(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		return fmt.Sprintf("%s (%d)", s.Reason, s.Code)
	}
	return err.Error()
}
