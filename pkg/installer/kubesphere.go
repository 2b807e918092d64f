package installer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// The names of the KubeSphere objects ks-mc reads and patches are in pkg/kubesphere.

// RestartedAtAnnotation is what "kubectl rollout restart" sets on the pod template.
const RestartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// ErrKubeSphereNotInstalled is wrapped by GetClusterConfiguration when the object (or its CRD) is missing.
var ErrKubeSphereNotInstalled = errors.New("KubeSphere is not installed")

// InstallKubeSphereHint is the advice printed when KubeSphere is missing.
const InstallKubeSphereHint = "install KubeSphere 3.x first (https://kubesphere.io/docs/v3.4/installing-on-kubernetes/introduction/overview/: " +
	"kubectl apply -f kubesphere-installer.yaml -f cluster-configuration.yaml)"

// ClusterConfiguration wraps the ks-installer object read through the dynamic client. Accessors
// never fail: missing fields read as "".
type ClusterConfiguration struct {
	Object *unstructured.Unstructured
}

// GetClusterConfiguration reads kubesphere-system/ks-installer. When it (or the CRD) does not exist
// the error wraps ErrKubeSphereNotInstalled.
func GetClusterConfiguration(ctx context.Context, c *Clients) (*ClusterConfiguration, error) {
	u, err := c.Dynamic.Resource(kubesphere.ClusterConfigurationGVR).Namespace(kubesphere.Namespace).Get(ctx, kubesphere.ClusterConfigurationName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: ClusterConfiguration %s/%s not found", ErrKubeSphereNotInstalled, kubesphere.Namespace, kubesphere.ClusterConfigurationName)
	}
	if err != nil {
		return nil, fmt.Errorf("get ClusterConfiguration %s/%s: %w", kubesphere.Namespace, kubesphere.ClusterConfigurationName, err)
	}
	return &ClusterConfiguration{Object: u}, nil
}

// String returns the string at a path of the object ("" when absent or not a scalar).
func (cc *ClusterConfiguration) String(path ...string) string {
	if cc == nil || cc.Object == nil {
		return ""
	}
	v, ok, _ := unstructured.NestedFieldNoCopy(cc.Object.Object, path...)
	if !ok || v == nil {
		return ""
	}
	return scalarString(v)
}

// ClusterRole is spec.multicluster.clusterRole; "none" when unset.
func (cc *ClusterConfiguration) ClusterRole() string {
	if r := cc.String("spec", "multicluster", "clusterRole"); r != "" {
		return r
	}
	return kubesphere.RoleNone
}

// ProxyPublishAddress is spec.multicluster.proxyPublishAddress.
func (cc *ClusterConfiguration) ProxyPublishAddress() string {
	return cc.String("spec", "multicluster", "proxyPublishAddress")
}

// JWTSecret is spec.authentication.jwtSecret (often empty: the installer then generates one).
func (cc *ClusterConfiguration) JWTSecret() Secret {
	return Secret(cc.String("spec", "authentication", "jwtSecret"))
}

// Version is the installed KubeSphere version from status.core.version (falls back to
// metadata.labels.version, which ks-installer's manifests set).
func (cc *ClusterConfiguration) Version() string {
	if v := cc.String("status", "core", "version"); v != "" {
		return v
	}
	return cc.String("metadata", "labels", "version")
}

// ComponentStatus is status.<component>.status ("enabled" when the installer finished it).
func (cc *ClusterConfiguration) ComponentStatus(component string) string {
	return cc.String("status", component, "status")
}

// MergePatch is a JSON merge patch (RFC 7386) under construction. Only the fields set on it are
// sent, so every other field of the target (including unknown ones) is left exactly as it is.
type MergePatch map[string]any

// Set puts value at path, creating intermediate objects.
func (p MergePatch) Set(value any, path ...string) {
	m := map[string]any(p)
	for _, k := range path[:len(path)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[path[len(path)-1]] = value
}

// SetIfDifferent sets value at path unless obj already holds an equal value there; it reports
// whether the patch changed. Numbers compare by value (JSON decoding yields int64 or float64).
func (p MergePatch) SetIfDifferent(obj map[string]any, value any, path ...string) bool {
	if cur, ok, _ := unstructured.NestedFieldNoCopy(obj, path...); ok && sameValue(cur, value) {
		return false
	}
	p.Set(value, path...)
	return true
}

// Empty reports whether the patch would change nothing.
func (p MergePatch) Empty() bool { return len(p) == 0 }

// JSON encodes the patch.
func (p MergePatch) JSON() ([]byte, error) { return json.Marshal(map[string]any(p)) }

// Get returns the value at path in the patch.
func (p MergePatch) Get(path ...string) (any, bool) {
	v, ok, _ := unstructured.NestedFieldNoCopy(map[string]any(p), path...)
	return v, ok
}

// Redacted returns a deep copy with the values at the given paths replaced by "<redacted>", for
// printing (dry-run output, -o yaml).
func (p MergePatch) Redacted(paths ...[]string) MergePatch {
	cp := MergePatch(deepCopyMap(p))
	for _, path := range paths {
		if _, ok := cp.Get(path...); ok {
			cp.Set(RedactedValue, path...)
		}
	}
	return cp
}

func deepCopyMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			out[k] = deepCopyMap(sub)
		} else {
			out[k] = v
		}
	}
	return out
}

func sameValue(a, b any) bool {
	if fa, ok := toFloat(a); ok {
		if fb, ok := toFloat(b); ok {
			return fa == fb
		}
	}
	return reflect.DeepEqual(a, b)
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int32:
		return float64(n), true
	case int64:
		return float64(n), true
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

// PatchClusterConfiguration sends a JSON merge patch to kubesphere-system/ks-installer (field
// manager ks-mc). With DryRunClient nothing is sent and (nil, nil) is returned; with DryRunServer
// the patch is sent with dryRun=All and the would-be object returned.
func PatchClusterConfiguration(ctx context.Context, c *Clients, patch MergePatch, dry DryRun) (*ClusterConfiguration, error) {
	obj, err := Writer{DryRun: dry}.MergePatch(ctx, DynamicResource(c, kubesphere.ClusterConfigurationGVR, kubesphere.Namespace), kubesphere.ClusterConfigurationName, patch)
	if err != nil {
		return nil, fmt.Errorf("patch ClusterConfiguration %s/%s: %w", kubesphere.Namespace, kubesphere.ClusterConfigurationName, err)
	}
	if obj == nil {
		return nil, nil
	}
	return &ClusterConfiguration{Object: obj.(*unstructured.Unstructured)}, nil
}

// RedactedValue replaces secrets in anything ks-mc prints.
const RedactedValue = "<redacted>"

// Secret is a sensitive string (jwtSecret, tokens). fmt, JSON and YAML encoding print it as
// "<redacted>" (or "" when empty); call Reveal to use the value.
type Secret string

// Reveal returns the secret value. Never print it.
func (s Secret) Reveal() string { return string(s) }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s == "" }

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return RedactedValue
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// MarshalJSON redacts (sigs.k8s.io/yaml goes through JSON, so YAML output is redacted too).
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// KubeSphereConfig is the part of kubesphere-config (data key kubesphere.yaml) ks-mc uses.
type KubeSphereConfig struct {
	Authentication struct {
		JWTSecret        Secret `json:"jwtSecret"`
		MaximumClockSkew string `json:"maximumClockSkew,omitempty"`
		OAuthOptions     struct {
			// AccessTokenMaxAge as written (a Go duration such as "0s", "1h", or a bare number of nanoseconds).
			AccessTokenMaxAge string `json:"accessTokenMaxAge,omitempty"`
		} `json:"oauthOptions"`
	} `json:"authentication"`
	Multicluster struct {
		ClusterRole         string `json:"clusterRole,omitempty"`
		Enable              bool   `json:"enable"`
		AgentImage          string `json:"agentImage,omitempty"`
		ProxyPublishService string `json:"proxyPublishService,omitempty"`
		ProxyPublishAddress string `json:"proxyPublishAddress,omitempty"`
		HostClusterName     string `json:"hostClusterName,omitempty"`
		ClusterName         string `json:"clusterName,omitempty"`
	} `json:"multicluster"`
	// Raw is the whole parsed document with authentication.jwtSecret replaced by RedactedValue
	// (the value is only in Authentication.JWTSecret), so printing Raw leaks nothing.
	Raw map[string]any `json:"-"`
}

// ParseKubeSphereConfig parses the kubesphere.yaml document. Errors never quote the document (it
// holds the jwtSecret).
func ParseKubeSphereConfig(doc string) (*KubeSphereConfig, error) {
	raw := map[string]any{}
	if err := yaml.Unmarshal([]byte(doc), &raw); err != nil {
		return nil, fmt.Errorf("parse %s: invalid YAML", kubesphere.ConfigKey)
	}
	k := &KubeSphereConfig{Raw: raw}
	str := func(path ...string) string {
		v, ok, _ := unstructured.NestedFieldNoCopy(raw, path...)
		if !ok || v == nil {
			return ""
		}
		return scalarString(v)
	}
	k.Authentication.JWTSecret = Secret(str("authentication", "jwtSecret"))
	k.Authentication.MaximumClockSkew = str("authentication", "maximumClockSkew")
	k.Authentication.OAuthOptions.AccessTokenMaxAge = str("authentication", "oauthOptions", "accessTokenMaxAge")
	k.Multicluster.ClusterRole = str("multicluster", "clusterRole")
	k.Multicluster.Enable, _ = strconv.ParseBool(str("multicluster", "enable"))
	k.Multicluster.AgentImage = str("multicluster", "agentImage")
	k.Multicluster.ProxyPublishService = str("multicluster", "proxyPublishService")
	k.Multicluster.ProxyPublishAddress = str("multicluster", "proxyPublishAddress")
	k.Multicluster.HostClusterName = str("multicluster", "hostClusterName")
	k.Multicluster.ClusterName = str("multicluster", "clusterName")
	if !k.Authentication.JWTSecret.IsZero() {
		_ = unstructured.SetNestedField(raw, RedactedValue, "authentication", "jwtSecret")
	}
	return k, nil
}

// GetKubeSphereConfig reads and parses the ConfigMap kubesphere-system/kubesphere-config.
func GetKubeSphereConfig(ctx context.Context, c *Clients) (*KubeSphereConfig, error) {
	cm, err := c.Kube.CoreV1().ConfigMaps(kubesphere.Namespace).Get(ctx, kubesphere.ConfigName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get ConfigMap %s/%s: %w", kubesphere.Namespace, kubesphere.ConfigName, err)
	}
	doc, ok := cm.Data[kubesphere.ConfigKey]
	if !ok {
		return nil, fmt.Errorf("ConfigMap %s/%s has no key %s", kubesphere.Namespace, kubesphere.ConfigName, kubesphere.ConfigKey)
	}
	k, err := ParseKubeSphereConfig(doc)
	if err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s: %w", kubesphere.Namespace, kubesphere.ConfigName, err)
	}
	return k, nil
}

// MaximumClockSkewDuration is authentication.maximumClockSkew (KubeSphere's default 10s when unset).
func (k *KubeSphereConfig) MaximumClockSkewDuration() (time.Duration, error) {
	if k.Authentication.MaximumClockSkew == "" {
		return 10 * time.Second, nil
	}
	return ParseKubeSphereDuration(k.Authentication.MaximumClockSkew)
}

// AccessTokenMaxAgeDuration is authentication.oauthOptions.accessTokenMaxAge (0 when unset is NOT
// assumed: KubeSphere's default is 2h, so unset returns 2h).
func (k *KubeSphereConfig) AccessTokenMaxAgeDuration() (time.Duration, error) {
	if k.Authentication.OAuthOptions.AccessTokenMaxAge == "" {
		return 2 * time.Hour, nil
	}
	return ParseKubeSphereDuration(k.Authentication.OAuthOptions.AccessTokenMaxAge)
}

// ParseKubeSphereDuration parses a duration the way KubeSphere's config loader does: a Go
// duration string ("10s", "0s", "1h30m") or a bare integer of nanoseconds ("0").
func ParseKubeSphereDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return d, nil
}

// scalarString renders a decoded JSON/YAML scalar as text (integers without exponent).
func scalarString(v any) string {
	switch t := v.(type) {
	case string:
		return t
	case bool:
		return strconv.FormatBool(t)
	case int64:
		return strconv.FormatInt(t, 10)
	case int:
		return strconv.Itoa(t)
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	case json.Number:
		return t.String()
	case map[string]any, []any:
		return ""
	}
	return fmt.Sprint(v)
}
