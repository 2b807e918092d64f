package installer

import (
	"archive/tar"
	"compress/gzip"
	"encoding/base64"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// Bundle is the support bundle of a diagnose run: the objects and logs behind the checks, every
// secret redacted. Objects go through manifests.RedactObject (Secret data, Cluster tokens and
// kubeconfigs, jwtSecrets, secret flags and env values); kubesphere-config is re-rendered from its
// redacted parse; annotations that copy whole objects (last-applied-configuration) and managedFields
// are dropped; and every file is finally scrubbed of every secret value diagnose has seen (jwtSecrets,
// Cluster and agent tokens, the kubeconfigs' keys and certificates, also base64-encoded).
type Bundle struct {
	mu      sync.Mutex
	files   map[string][]byte
	secrets []string
}

func newBundle() *Bundle { return &Bundle{files: map[string][]byte{}} }

// Add puts a file into the bundle (the report, from the command layer); it is scrubbed like the rest.
func (b *Bundle) Add(name string, data []byte) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[name] = data
}

func (b *Bundle) addText(name, text string) { b.Add(name, []byte(text)) }

// addObject adds a redacted copy of an object.
func (b *Bundle) addObject(name string, obj map[string]any) {
	if b == nil || obj == nil {
		return
	}
	u := manifests.RedactObject(&unstructured.Unstructured{Object: obj})
	stripNoise(u.Object)
	data, err := yaml.Marshal(u.Object)
	if err != nil {
		return
	}
	b.Add(name, data)
}

// addTyped adds a typed object (or list) after converting it to unstructured.
func (b *Bundle) addTyped(name, apiVersion, kind string, obj any) {
	if b == nil {
		return
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return
	}
	m["apiVersion"], m["kind"] = apiVersion, kind
	if items, ok := m["items"].([]any); ok {
		itemKind := strings.TrimSuffix(kind, "List")
		for i, it := range items {
			if im, ok := it.(map[string]any); ok {
				im["apiVersion"], im["kind"] = apiVersion, itemKind
				r := manifests.RedactObject(&unstructured.Unstructured{Object: im})
				stripNoise(r.Object)
				items[i] = r.Object
			}
		}
		data, err := yaml.Marshal(m)
		if err == nil {
			b.Add(name, data)
		}
		return
	}
	b.addObject(name, m)
}

// addKubeSphereConfig adds kubesphere-config as parsed (its jwtSecret already replaced).
func (b *Bundle) addKubeSphereConfig(name string, cfg *KubeSphereConfig) {
	if b == nil || cfg == nil {
		return
	}
	data, err := yaml.Marshal(cfg.Raw)
	if err != nil {
		return
	}
	b.Add(name, data)
}

func stripNoise(obj map[string]any) {
	unstructured.RemoveNestedField(obj, "metadata", "managedFields")
	unstructured.RemoveNestedField(obj, "metadata", "annotations", "kubectl.kubernetes.io/last-applied-configuration")
}

// WriteTarGz writes the bundle as a gzip-compressed tar archive, every file scrubbed.
func (b *Bundle) WriteTarGz(w io.Writer, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(b.files))
	for n := range b.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data := []byte(b.scrub(string(b.files[n])))
		hdr := &tar.Header{Name: "ks-mc-diagnose/" + n, Mode: 0o600, Size: int64(len(data)), ModTime: now, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

// Files lists the bundle's file names (tests).
func (b *Bundle) Files() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.files))
	for n := range b.files {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (b *Bundle) scrub(s string) string { return manifests.Scrub(s, b.secrets...) }

// collectSecrets lists every secret value diagnose has read, and their base64 forms.
func collectSecrets(h *hostData, members []*memberData) []string {
	var out []string
	add := func(s string) {
		if len(s) >= 8 {
			out = append(out, s, base64.StdEncoding.EncodeToString([]byte(s)))
		}
	}
	if h.cfg != nil {
		add(h.cfg.Authentication.JWTSecret.Reveal())
	}
	if h.cc != nil {
		add(h.cc.JWTSecret().Reveal())
	}
	for i := range h.clusters {
		c := &h.clusters[i]
		tok, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
		add(tok)
		kc, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
		add(kc)
		if raw, err := base64.StdEncoding.DecodeString(kc); err == nil {
			if cfg, err := clientcmd.Load(raw); err == nil {
				for _, a := range cfg.AuthInfos {
					add(string(a.ClientKeyData))
					add(string(a.ClientCertificateData))
					add(a.Token)
				}
				for _, cl := range cfg.Clusters {
					add(string(cl.CertificateAuthorityData))
				}
			}
		}
	}
	for _, m := range members {
		if m.cfg != nil {
			add(m.cfg.Authentication.JWTSecret.Reveal())
		}
		if m.cc != nil {
			add(m.cc.JWTSecret().Reveal())
		}
		add(m.agentToken.Reveal())
	}
	// Longest first, so that a secret containing another is replaced whole.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}
