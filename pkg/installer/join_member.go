package installer

import (
	"context"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// MemberPatch builds the member's ClusterConfiguration merge patch: the host's jwtSecret,
// clusterRole member and accessTokenMaxAge 0. Values already in place are left out.
func MemberPatch(cc *ClusterConfiguration, jwt Secret) MergePatch {
	p := MergePatch{}
	p.SetIfDifferent(cc.Object.Object, jwt.Reveal(), "spec", "authentication", "jwtSecret")
	p.SetIfDifferent(cc.Object.Object, kubesphere.RoleMember, "spec", "multicluster", "clusterRole")
	p.SetIfDifferent(cc.Object.Object, int64(0), "spec", "authentication", "oauthOptions", "accessTokenMaxAge")
	return p
}

var jwtPath = []string{"spec", "authentication", "jwtSecret"}

func describeMemberPatch(p MergePatch) string {
	var parts []string
	if _, ok := p.Get(jwtPath...); ok {
		parts = append(parts, "authentication.jwtSecret (the host's, "+RedactedValue+")")
	}
	if v, ok := p.Get("spec", "multicluster", "clusterRole"); ok {
		parts = append(parts, fmt.Sprintf("multicluster.clusterRole: %v", v))
	}
	if _, ok := p.Get("spec", "authentication", "oauthOptions", "accessTokenMaxAge"); ok {
		parts = append(parts, "authentication.oauthOptions.accessTokenMaxAge: 0")
	}
	return "set " + strings.Join(parts, ", ")
}

// memberConfigDone reports whether the member's kubesphere-config carries the join settings.
func (j *Join) memberConfigDone(cfg *KubeSphereConfig) (bool, string) {
	var missing []string
	if cfg.Authentication.JWTSecret != j.jwt {
		missing = append(missing, "jwtSecret differs from the host's")
	}
	if cfg.Multicluster.ClusterRole != kubesphere.RoleMember {
		missing = append(missing, fmt.Sprintf("clusterRole is %q", cfg.Multicluster.ClusterRole))
	}
	if d, err := cfg.AccessTokenMaxAgeDuration(); err != nil || d != 0 {
		missing = append(missing, "accessTokenMaxAge is not 0")
	}
	if len(missing) == 0 {
		return true, "settings applied"
	}
	return false, "kubesphere-config: " + strings.Join(missing, ", ")
}

func (j *Join) memberSettings(ctx context.Context, st *joinState) error {
	patch := MemberPatch(st.memberCC, j.jwt)
	done, _ := j.memberConfigDone(st.memberCfg)
	if patch.Empty() && done {
		j.rep.Step("member settings: jwtSecret, clusterRole member and accessTokenMaxAge 0 already in place")
	}
	since := time.Now()
	if !patch.Empty() {
		redacted := patch.Redacted(jwtPath)
		j.log.Record(Change{Object: side(j.member, "member") + " " + ccObject, Action: "patch", Summary: describeMemberPatch(patch), Patch: redacted})
		j.result.MemberObjects = append(j.result.MemberObjects, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": kubesphere.ClusterConfigurationAPIVersion, "kind": "ClusterConfiguration",
			"metadata": map[string]any{"name": kubesphere.ClusterConfigurationName, "namespace": kubesphere.Namespace},
			"spec":     redacted["spec"],
		}})
		if _, err := PatchClusterConfiguration(ctx, j.member, patch, j.opts.DryRun); err != nil {
			return fmt.Errorf("member: %w", err)
		}
		if j.opts.DryRun.Enabled() {
			j.result.Pending = append(j.result.Pending, "the member's ks-installer run and a ks-apiserver restart")
			return nil
		}
	} else if !done {
		since = LastUpdateBy(st.memberCC.Object, kubesphere.FieldManager)
	}
	if j.opts.DryRun.Enabled() {
		return nil
	}
	if !done || !patch.Empty() {
		err := WaitForInstaller(ctx, j.member, WaitOptions{
			What: "the member settings", Timeout: j.remaining(), Since: since, Interval: j.opts.PollInterval,
			Done: func(ctx context.Context) (bool, string, error) {
				cfg, err := GetKubeSphereConfig(ctx, j.member)
				if err != nil {
					return false, "", err
				}
				ok, obs := j.memberConfigDone(cfg)
				return ok, obs, nil
			},
		}, j.rep)
		if err != nil {
			return fmt.Errorf("member: %w", err)
		}
		j.rep.Step("member: ks-installer applied the settings")
	}
	cc, err := GetClusterConfiguration(ctx, j.member)
	if err != nil {
		return fmt.Errorf("member: %w", err)
	}
	need, why, err := NeedsAPIServerRestart(ctx, j.member, cc)
	if err != nil {
		return fmt.Errorf("member: %w", err)
	}
	if need {
		if _, err := RestartDeployment(ctx, j.member, kubesphere.Namespace, kubesphere.APIServerName, j.opts.DryRun); err != nil {
			return fmt.Errorf("member: %w", err)
		}
		j.log.Record(Change{Object: side(j.member, "member") + " deployment " + kubesphere.Namespace + "/" + kubesphere.APIServerName, Action: "restart", Summary: why})
		if err := WaitForRollout(ctx, j.member, kubesphere.Namespace, kubesphere.APIServerName, j.remaining(), j.rep); err != nil {
			return fmt.Errorf("member: %w", err)
		}
	}
	return nil
}
