package manifests

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"text/template"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/version"
)

//go:embed templates/proxy-*.yaml
var proxyTemplates embed.FS

// Names and labels of the host-side proxy. The Deployment takes the place of KubeSphere's Tower, so
// it keeps Tower's name (kubesphere.TowerName), namespace, service account and pod labels.
const (
	ProxyPort          = int32(8080)
	ProxyContainerName = "proxy"
	// ProxyMode is the first container argument: the binary's proxy subcommand.
	ProxyMode = "proxy"
)

// ProxyValues are the typed inputs of the proxy Deployment.
type ProxyValues struct {
	Namespace       string
	Name            string
	Image           string
	ImagePullPolicy string
	ServiceAccount  string
	Port            int32
	// AllowPlaintextAgents renders --allow-plaintext-agents: the proxy then accepts agents over plain
	// http:// (their token travels in clear text). Off, the proxy refuses them (its default).
	AllowPlaintextAgents bool
	// ExtraArgs are appended after the standard arguments (--bind-address, --port and
	// --allow-plaintext-agents when asked).
	ExtraArgs []string
}

// DefaultProxyValues returns the values init-host uses unless told otherwise: this build's image.
func DefaultProxyValues() ProxyValues {
	return ProxyValues{
		Namespace:       kubesphere.Namespace,
		Name:            kubesphere.TowerName,
		Image:           version.Image(),
		ImagePullPolicy: "IfNotPresent",
		ServiceAccount:  kubesphere.ServiceAccount,
		Port:            ProxyPort,
	}
}

// Args returns the container arguments: the proxy mode, listening on the pod IP (the sandbox runs
// several clusters on one machine, so never on 0.0.0.0) and the Service's target port.
func (v ProxyValues) Args() []string {
	args := []string{ProxyMode, "--bind-address=$(POD_IP)", "--port=" + strconv.Itoa(int(v.Port))}
	if v.AllowPlaintextAgents {
		args = append(args, ProxyAllowPlaintextArg)
	}
	return append(args, v.ExtraArgs...)
}

// Validate reports missing or invalid values.
func (v ProxyValues) Validate() error {
	switch {
	case v.Namespace == "" || v.Name == "":
		return errors.New("proxy deployment: namespace and name are required")
	case v.Image == "":
		return errors.New("proxy deployment: image is required")
	case v.ServiceAccount == "":
		return errors.New("proxy deployment: service account is required")
	case v.Port < 1 || v.Port > 65535:
		return fmt.Errorf("proxy deployment: invalid port %d", v.Port)
	}
	switch v.ImagePullPolicy {
	case "Always", "IfNotPresent", "Never":
	default:
		return fmt.Errorf("proxy deployment: invalid image pull policy %q", v.ImagePullPolicy)
	}
	return nil
}

var proxyTmpl = template.Must(template.New("proxy-deployment.yaml").Funcs(template.FuncMap{
	// quote renders a string as a YAML double-quoted scalar (JSON strings are valid YAML).
	"quote": func(s string) (string, error) {
		b, err := json.Marshal(s)
		return string(b), err
	},
}).ParseFS(proxyTemplates, "templates/proxy-deployment.yaml"))

// RenderProxyDeploymentYAML renders the proxy Deployment as YAML.
func RenderProxyDeploymentYAML(v ProxyValues) ([]byte, error) {
	if err := v.Validate(); err != nil {
		return nil, err
	}
	data := struct {
		ProxyValues
		Args []string
	}{v, v.Args()}
	var buf bytes.Buffer
	if err := proxyTmpl.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("render proxy deployment: %w", err)
	}
	return buf.Bytes(), nil
}

// ProxyDeployment renders and decodes the proxy Deployment (strictly: a template typo is an error).
func ProxyDeployment(v ProxyValues) (*appsv1.Deployment, error) {
	b, err := RenderProxyDeploymentYAML(v)
	if err != nil {
		return nil, err
	}
	d := &appsv1.Deployment{}
	if err := yaml.UnmarshalStrict(b, d); err != nil {
		return nil, fmt.Errorf("decode rendered proxy deployment: %w", err)
	}
	return d, nil
}

// IsProxyDeployment reports whether a tower Deployment runs the ks-mc proxy (rather than
// KubeSphere's Tower): its first container's first argument is the proxy mode and it sets no
// command (the ks-mc image's entrypoint is the binary).
func IsProxyDeployment(d *appsv1.Deployment) bool {
	cs := d.Spec.Template.Spec.Containers
	if len(cs) == 0 {
		return false
	}
	c := cs[0]
	return len(c.Command) == 0 && len(c.Args) > 0 && c.Args[0] == ProxyMode
}

// ProxyAllowPlaintextArg is the proxy argument that accepts agents over plain http:// (their token
// then travels in clear text). The rendered proxy carries it only when the operator asked for it.
const ProxyAllowPlaintextArg = "--allow-plaintext-agents"

// ProxyAllowsPlaintextAgents reports whether a tower Deployment running the ks-mc proxy accepts
// agents over plain http://: its proxy container has --allow-plaintext-agents (or =true). The
// proxy's own default refuses them.
func ProxyAllowsPlaintextAgents(d *appsv1.Deployment) bool {
	if d == nil || !IsProxyDeployment(d) {
		return false
	}
	allowed := false
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		switch a {
		case ProxyAllowPlaintextArg, ProxyAllowPlaintextArg + "=true":
			allowed = true
		case ProxyAllowPlaintextArg + "=false":
			allowed = false
		}
	}
	return allowed
}
