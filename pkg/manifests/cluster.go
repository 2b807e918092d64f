package manifests

import (
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// ClusterValues are the inputs of the Cluster object.
type ClusterValues struct {
	Name        string
	Provider    string
	Description string
	Group       string
	Region      string
	// MemberUID is the member's kube-system UID (annotation MemberUIDAnnotation).
	MemberUID string
	// Labels and Annotations are extra metadata from the user.
	Labels      map[string]string
	Annotations map[string]string
}

// RenderCluster renders the Cluster of an agent connection.
func RenderCluster(v ClusterValues) (*unstructured.Unstructured, error) {
	if err := ValidateClusterName(v.Name); err != nil {
		return nil, err
	}
	labels := map[string]string{kubesphere.ManagedByLabel: kubesphere.ManagedByValue}
	for k, val := range v.Labels {
		labels[k] = val
	}
	if v.Group != "" {
		labels[kubesphere.ClusterGroupLabel] = v.Group
	}
	if v.Region != "" {
		labels[kubesphere.ClusterRegionLabel] = v.Region
	}
	annotations := map[string]string{kubesphere.CreatorAnnotation: kubesphere.ManagedByValue}
	for k, val := range v.Annotations {
		annotations[k] = val
	}
	if v.Description != "" {
		annotations[kubesphere.DescriptionAnnotation] = v.Description
	}
	if v.MemberUID != "" {
		annotations[kubesphere.MemberUIDAnnotation] = v.MemberUID
	}
	provider := v.Provider
	data := struct {
		Name, Provider      string
		Labels, Annotations map[string]string
	}{v.Name, provider, labels, annotations}
	objs, err := renderTemplateObjects(agentTemplateFS, "templates/cluster.yaml", data)
	if err != nil {
		return nil, err
	}
	if len(objs) != 1 {
		return nil, fmt.Errorf("cluster template rendered %d objects, want 1", len(objs))
	}
	return objs[0], nil
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// ValidateClusterName checks that name is a DNS label of at most 60 characters (it becomes the
// Service mc-<name> on the host).
func ValidateClusterName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("cluster name is empty")
	case len(name) > kubesphere.MaxClusterNameLength:
		return fmt.Errorf("cluster name %q is %d characters long: at most %d are allowed (the host creates Service mc-<name>)", name, len(name), kubesphere.MaxClusterNameLength)
	case !dnsLabel.MatchString(name):
		return fmt.Errorf("cluster name %q is not a DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// SanitizeClusterName turns a kubeconfig context name (say "arn:aws:eks:eu-west-1:123:cluster/Prod_1"
// or "kind-member1") into a valid cluster name: lowercase, every run of other characters replaced by
// '-', trimmed to 60 characters. It returns "" when nothing usable remains.
func SanitizeClusterName(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	dash := false
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.Trim(b.String(), "-")
	if len(out) > kubesphere.MaxClusterNameLength {
		out = strings.TrimRight(out[:kubesphere.MaxClusterNameLength], "-")
	}
	return out
}
