// Package manifests renders the Kubernetes objects ks-mc applies, from embedded templates and typed
// values. Rendering is deterministic: the same values give byte-identical YAML.
package manifests

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/template"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/version"
)

//go:embed templates/agent-tower.yaml templates/agent-ksmc.yaml templates/cluster.yaml
var agentTemplateFS embed.FS

// The names of the agent objects on a member (kubesphere.AgentName, kubesphere.AgentTokenSecretName,
// ...) are in pkg/kubesphere.

// MemoryLimitEnv is the environment variable of the bundled agent's and the proxy's containers that
// carries the container's memory limit in bytes (downward API, resourceFieldRef limits.memory); the
// binary gives the Go runtime a soft memory limit of 90 % of it (pkg/cmd, memlimit.go).
const MemoryLimitEnv = "KSMC_MEMORY_LIMIT"

// AgentTokenMountPath is where the bundled agent reads its token file.
const AgentTokenMountPath = "/var/run/secrets/ks-mc/agent"

// AgentSelector are the labels KubeSphere gives its agent pods (kept for the bundled agent too:
// a Deployment's selector is immutable).
func AgentSelector() map[string]string {
	return map[string]string{"app": "agent", "app.kubernetes.io/part-of": "tower"}
}

// AgentValues are the inputs of both agent renderings.
type AgentValues struct {
	// ClusterName is the Cluster's name on the host.
	ClusterName string
	// Token is the agent token from the host's Cluster spec.connection.token. It is a secret.
	Token string
	// ProxyServer is the host's proxy address as agents dial it (http(s)://host:port).
	ProxyServer string
	// Image overrides the agent image: the host's multicluster.agentImage for Tower (default
	// KubeSphereAgentImage), version.Image() for the bundled agent.
	Image string
	// CACertHash pins the proxy CA for the bundled agent ("sha256:<hex>"); required with https.
	CACertHash string
	// DeploymentName is the bundled agent's Deployment: "" or kubesphere.AgentName, or
	// kubesphere.MigratedAgentName on a member moved from Tower by migrate (then with MigratedAgentSelector).
	// Tower agents are always kubesphere.AgentName.
	DeploymentName string
}

// Validate checks the values for the given tunnel. Errors never quote the token.
func (v AgentValues) Validate(t kubesphere.Tunnel) error {
	if v.ClusterName == "" {
		return fmt.Errorf("agent: cluster name is required")
	}
	if v.Token == "" {
		return fmt.Errorf("agent: the token of cluster %s is empty (the proxy has not assigned one yet)", v.ClusterName)
	}
	u, err := url.Parse(v.ProxyServer)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("agent: proxy address %q must be http(s)://host[:port]", v.ProxyServer)
	}
	switch t {
	case kubesphere.TunnelTower:
		if v.DeploymentName != "" && v.DeploymentName != kubesphere.AgentName {
			return fmt.Errorf("agent: the Tower agent is always Deployment %s", kubesphere.AgentName)
		}
	case kubesphere.TunnelKsMc:
		if v.DeploymentName != "" && v.DeploymentName != kubesphere.AgentName && v.DeploymentName != kubesphere.MigratedAgentName {
			return fmt.Errorf("agent: unknown agent Deployment name %q", v.DeploymentName)
		}
		if u.Scheme == "https" && v.CACertHash == "" {
			return fmt.Errorf("agent: the proxy address %s is https but no CA hash is known to pin it", v.ProxyServer)
		}
		if v.CACertHash != "" && !strings.HasPrefix(v.CACertHash, "sha256:") {
			return fmt.Errorf("agent: CA hash must be sha256:<hex>")
		}
	default:
		return fmt.Errorf("agent: cannot render tunnel %q (resolve auto first)", t)
	}
	return nil
}

type agentTemplateData struct {
	AgentValues
	Name, Namespace, ServiceAccount string
	SecretName, SecretKey           string
	TokenMountPath                  string
	ConfigHash                      string
	Labels, Selector                map[string]string
}

// RenderAgent renders the objects to apply on the member: for Tower the Deployment alone (token on
// its command line, as KubeSphere does), for the bundled agent a token Secret and the Deployment.
func RenderAgent(t kubesphere.Tunnel, v AgentValues) ([]*unstructured.Unstructured, error) {
	if err := v.Validate(t); err != nil {
		return nil, err
	}
	d := agentTemplateData{
		AgentValues: v, Name: kubesphere.AgentName, Namespace: kubesphere.Namespace, ServiceAccount: kubesphere.ServiceAccount,
		SecretName: kubesphere.AgentTokenSecretName, SecretKey: kubesphere.AgentTokenSecretKey, TokenMountPath: AgentTokenMountPath,
		Selector: AgentSelector(),
	}
	var tmpl string
	switch t {
	case kubesphere.TunnelTower:
		tmpl = "templates/agent-tower.yaml"
		if d.Image == "" {
			d.Image = kubesphere.DefaultAgentImage
		}
		// Exactly KubeSphere's labels, so that the console and ks-mc see the same agent.
		d.Labels = AgentSelector()
	case kubesphere.TunnelKsMc:
		tmpl = "templates/agent-ksmc.yaml"
		if d.Image == "" {
			d.Image = version.Image()
		}
		if v.DeploymentName == kubesphere.MigratedAgentName {
			d.Name, d.Selector = kubesphere.MigratedAgentName, MigratedAgentSelector()
		}
		d.Labels = AgentSelectorFor(d.Name)
		d.Labels[kubesphere.ManagedByLabel] = kubesphere.ManagedByValue
		sum := sha256.Sum256([]byte("ks-mc-agent\x00" + v.Token + "\x00" + v.CACertHash + "\x00" + v.ProxyServer + "\x00" + v.ClusterName))
		d.ConfigHash = hex.EncodeToString(sum[:8])
	}
	return renderTemplateObjects(agentTemplateFS, tmpl, d)
}

// renderTemplateObjects executes a template of fs and decodes the YAML documents it produces.
func renderTemplateObjects(fs embed.FS, name string, data any) ([]*unstructured.Unstructured, error) {
	src, err := fs.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read template %s: %w", name, err)
	}
	t, err := template.New(name).Option("missingkey=error").Funcs(template.FuncMap{"quote": yamlQuote}).Parse(string(src))
	if err != nil {
		return nil, fmt.Errorf("parse template %s: %w", name, err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		// Do not wrap: the error could quote values, and values hold secrets.
		return nil, fmt.Errorf("render template %s failed", name)
	}
	return DecodeObjects(buf.Bytes())
}

// yamlQuote renders a string as a JSON string, which is valid YAML for any content.
func yamlQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// DecodeObjects splits a multi-document YAML stream into objects (empty documents are skipped).
// Errors never quote the input: rendered manifests hold secrets.
func DecodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read rendered manifest: invalid YAML stream")
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("decode rendered manifest: invalid YAML")
		}
		if s := strings.TrimSpace(string(js)); s == "null" || s == "{}" || s == "" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("decode rendered manifest: not a Kubernetes object")
		}
		out = append(out, u)
	}
	return out, nil
}

// EncodeYAML writes objects as a YAML stream ("---" between documents), keys sorted.
func EncodeYAML(objs []*unstructured.Unstructured) ([]byte, error) {
	var buf bytes.Buffer
	for i, o := range objs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		buf.Write(b)
	}
	return buf.Bytes(), nil
}
