package installer

// Before KubeSphere is installed: the host and member settings in the file the installation
// starts from (ks-installer's cluster-configuration.yaml, KubeKey's config-sample.yaml). The
// edits are the ones init-host and join make on a live ClusterConfiguration (HostPatch,
// MemberPatch), so that after an installation from the file a plain join finds them in place.

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/installer/cfgfile"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// FileSecretPaths are the ClusterConfiguration values of a file that are never shown.
var FileSecretPaths = [][]string{jwtPath}

// FileChange is one value set in a file (secret values redacted).
type FileChange struct {
	Path string `json:"path"`
	From any    `json:"from,omitempty"`
	To   any    `json:"to"`
}

// FileResult is the machine-readable outcome of init-host -f / join -f.
type FileResult struct {
	File              string       `json:"file"`
	Kind              cfgfile.Kind `json:"kind"`
	KubeSphereVersion string       `json:"kubeSphereVersion,omitempty"`
	Role              string       `json:"clusterRole"`
	HostContext       string       `json:"hostContext,omitempty"`
	DryRun            DryRun       `json:"dryRun,omitempty"`
	Changed           bool         `json:"changed"`
	Changes           []FileChange `json:"changes"`
	// Mode is the file's permission bits after the edit (octal).
	Mode string `json:"mode,omitempty"`
}

func fileCC(f *cfgfile.File) *ClusterConfiguration {
	return &ClusterConfiguration{Object: &unstructured.Unstructured{Object: f.Object()}}
}

// CheckHostFile applies init-host's role rule to a file: none or host become host; member only
// with force (as init-host on a live member); anything else is an error. It returns warnings.
func CheckHostFile(f *cfgfile.File, force bool) ([]string, error) {
	switch role := fileCC(f).ClusterRole(); role {
	case kubesphere.RoleHost, kubesphere.RoleNone:
		return nil, nil
	case kubesphere.RoleMember:
		msg := "the file sets clusterRole member: a cluster installed from it would join another host"
		if force {
			return []string{msg + "; making it a host file because of --force"}, nil
		}
		return nil, fmt.Errorf("%s: pass --force to make it a host file", msg)
	default:
		return nil, fmt.Errorf("the file sets an unknown spec.multicluster.clusterRole %q: fix it (host, member or none)", role)
	}
}

// CheckMemberFile applies join's role rule to a file: none or member become member; host only
// with force (join refuses a live host; a file is not installed yet, so --force may switch it).
func CheckMemberFile(f *cfgfile.File, force bool) ([]string, error) {
	switch role := fileCC(f).ClusterRole(); role {
	case kubesphere.RoleMember, kubesphere.RoleNone:
		return nil, nil
	case kubesphere.RoleHost:
		msg := "the file sets clusterRole host: a host cannot join another host"
		if force {
			return []string{msg + "; making it a member file because of --force"}, nil
		}
		return nil, fmt.Errorf("%s: pick the member's file, or pass --force to make it a member file", msg)
	default:
		return nil, fmt.Errorf("the file sets an unknown spec.multicluster.clusterRole %q: fix it (host, member or none)", role)
	}
}

// HostFileEdits are init-host's ClusterConfiguration settings (HostPatch) as file edits: only
// the values that differ. address must be validated (ValidateProxyAddress) or empty.
func HostFileEdits(f *cfgfile.File, address string) []cfgfile.Edit {
	return patchEdits(HostPatch(fileCC(f), address))
}

// MemberFileEdits are join's ClusterConfiguration settings (MemberPatch: the host's jwtSecret,
// clusterRole member, accessTokenMaxAge 0) as file edits: only the values that differ.
func MemberFileEdits(f *cfgfile.File, jwt Secret) []cfgfile.Edit {
	return patchEdits(MemberPatch(fileCC(f), jwt))
}

func patchEdits(p MergePatch) []cfgfile.Edit {
	var out []cfgfile.Edit
	var walk func(m map[string]any, path []string)
	walk = func(m map[string]any, path []string) {
		for k, v := range m {
			p := append(append([]string{}, path...), k)
			if sub, ok := v.(map[string]any); ok {
				walk(sub, p)
				continue
			}
			out = append(out, cfgfile.Edit{Path: p, Value: v})
		}
	}
	walk(p, nil)
	sort.Slice(out, func(i, j int) bool { return strings.Join(out[i].Path, ".") < strings.Join(out[j].Path, ".") })
	return out
}

// FileChanges describes edits for printing, secrets redacted.
func FileChanges(f *cfgfile.File, edits []cfgfile.Edit) []FileChange {
	out := []FileChange{}
	for _, e := range edits {
		from, _ := f.Get(e.Path...)
		to := e.Value
		if isSecretPath(e.Path) {
			to = RedactedValue
			if from != nil && from != "" {
				from = RedactedValue
			}
		}
		out = append(out, FileChange{Path: strings.Join(e.Path, "."), From: from, To: to})
	}
	return out
}

// DescribeFileEdits is a one-line summary, secrets redacted.
func DescribeFileEdits(edits []cfgfile.Edit) string {
	var parts []string
	for _, e := range edits {
		name := strings.Join(e.Path[1:], ".")
		if isSecretPath(e.Path) {
			parts = append(parts, name+" (the host's, "+RedactedValue+")")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %v", name, e.Value))
	}
	return "set " + strings.Join(parts, ", ")
}

func isSecretPath(p []string) bool {
	for _, s := range FileSecretPaths {
		if strings.Join(s, ".") == strings.Join(p, ".") {
			return true
		}
	}
	return false
}

// HostSecret runs join's host checks (reachable, clusterRole host, multicluster enabled, a
// jwtSecret, a proxy address, the proxy Deployment, access) and returns the host's jwtSecret.
// It changes nothing on the host. The secret is zero when a check failed.
func HostSecret(ctx context.Context, host *Clients, opts JoinOptions) (*Preflight, Secret) {
	j := NewJoin(host, nil, opts, nil)
	p := &Preflight{}
	if ok := j.hostPreflight(ctx, p, &joinState{}); !ok || p.HasErrors() {
		return p, ""
	}
	return p, j.jwt
}
