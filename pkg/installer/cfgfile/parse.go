// Package cfgfile edits the files a KubeSphere 3.x installation starts from, before it is
// installed: ks-installer's cluster-configuration.yaml (one ClusterConfiguration document) and
// KubeKey's config-sample.yaml (a kubekey.kubesphere.io Cluster document, then the
// ClusterConfiguration).
//
// Edits are surgical: the YAML is parsed only to locate values (line and column of each node),
// and the new values are spliced into the original bytes. The document is never re-serialized,
// so comments, key order, indentation, quoting, the other documents, line endings (LF or CRLF)
// and a missing trailing newline stay as they were. Every result is parsed again and compared
// with the intended objects before it is returned, so an edit that would change anything else
// is an error, not a file.
//
// The package never prints. Errors never contain values of the file (a jwtSecret may be there).
package cfgfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	sigsyaml "sigs.k8s.io/yaml"
)

// Kind of file.
type Kind string

const (
	// KindInstaller is ks-installer's cluster-configuration.yaml (or any file whose only
	// KubeSphere document is the ClusterConfiguration).
	KindInstaller Kind = "ks-installer"
	// KindKubeKey is KubeKey's config-sample.yaml: a kubekey.kubesphere.io Cluster, then the
	// ClusterConfiguration.
	KindKubeKey Kind = "kubekey"
)

// Errors a caller may test for with errors.Is.
var (
	ErrNotYAML                   = errors.New("not YAML")
	ErrNoClusterConfiguration    = errors.New("no ClusterConfiguration in the file")
	ErrManyClusterConfigurations = errors.New("more than one ClusterConfiguration in the file")
	ErrVersion                   = errors.New("unsupported KubeSphere version")
	ErrUnsupported               = errors.New("cannot edit the file surgically")
)

// File is a parsed configuration file.
type File struct {
	data  []byte
	nl    string // "\r\n" when the file's first line break is CRLF, else "\n"
	lines []int  // byte offset of each line's start
	docs  []*yaml.Node
	cc    *yaml.Node // the ClusterConfiguration's root mapping
	ccDoc int

	// Kind of the file.
	Kind Kind
	// Version is the ClusterConfiguration's metadata.labels.version ("" when absent).
	Version string
	obj     map[string]any
}

// Data returns the file's bytes (do not modify).
func (f *File) Data() []byte { return f.data }

// Object returns the ClusterConfiguration as the API server would store it from this file
// (YAML read the way kubectl reads it; numbers are int64 or float64). Do not modify.
func (f *File) Object() map[string]any { return f.obj }

var ksVersion = regexp.MustCompile(`^v?(\d+)\.(\d+)(\.\d+)?([-+].*)?$`)

// Parse reads a cluster-configuration.yaml or a KubeKey config-sample.yaml. It fails, without
// quoting the file's values, on: not YAML; no ClusterConfiguration; more than one; a version
// other than KubeSphere 3.x (KubeSphere 4 has no ks-installer); a KubeKey file without a
// version (KubeKey itself refuses it).
func Parse(data []byte) (*File, error) {
	f := &File{data: data, nl: "\n"}
	if i := bytes.IndexByte(data, '\n'); i > 0 && data[i-1] == '\r' {
		f.nl = "\r\n"
	}
	f.lines = []int{0}
	for i, b := range data {
		if b == '\n' {
			f.lines = append(f.lines, i+1)
		}
	}
	if err := checkBytes(data); err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNotYAML, err)
		}
		if n.Kind != yaml.DocumentNode || len(n.Content) == 0 {
			continue
		}
		if hasAlias(&n) {
			return nil, fmt.Errorf("%w: the file uses YAML aliases (*name)", ErrUnsupported)
		}
		f.docs = append(f.docs, &n)
	}
	kubekey := false
	for i, d := range f.docs {
		root := d.Content[0]
		if root.Kind != yaml.MappingNode {
			continue
		}
		api, kind := scalarAt(root, "apiVersion"), scalarAt(root, "kind")
		if strings.HasPrefix(api, "kubekey.kubesphere.io/") && kind == "Cluster" {
			kubekey = true
		}
		if kind == "ClusterConfiguration" && strings.HasPrefix(api, "installer.kubesphere.io/") {
			if f.cc != nil {
				return nil, ErrManyClusterConfigurations
			}
			f.cc, f.ccDoc = root, i
		}
	}
	if f.cc == nil {
		return nil, ErrNoClusterConfiguration
	}
	f.Kind = KindInstaller
	if kubekey {
		f.Kind = KindKubeKey
	}
	obj, err := nodeObject(f.docs[f.ccDoc])
	if err != nil {
		return nil, fmt.Errorf("%w: the ClusterConfiguration: %v", ErrNotYAML, err)
	}
	m, ok := obj.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: the ClusterConfiguration is not a mapping", ErrNotYAML)
	}
	f.obj = m
	if spec := mapValue(f.cc, "spec"); spec == nil || spec.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%w: the ClusterConfiguration has no spec mapping", ErrUnsupported)
	}
	if md := mapValue(f.cc, "metadata"); md != nil {
		if l := mapValue(md, "labels"); l != nil {
			if v := mapValue(l, "version"); v != nil && v.Kind == yaml.ScalarNode {
				f.Version = v.Value
			}
		}
	}
	if err := f.checkVersion(); err != nil {
		return nil, err
	}
	return f, nil
}

// checkBytes refuses what ks-mc does not edit safely: a large file, Unicode line separators, a
// byte order mark, carriage returns outside CRLF.
func checkBytes(data []byte) error {
	if len(data) > MaxSize {
		return fmt.Errorf("%w: the file is larger than %d bytes", ErrUnsupported, MaxSize)
	}
	if bytes.ContainsRune(data, '\u0085') || bytes.ContainsRune(data, '\u2028') || bytes.ContainsRune(data, '\u2029') {
		return fmt.Errorf("%w: the file has Unicode line separators (NEL, LS or PS)", ErrUnsupported)
	}
	if bytes.HasPrefix(data, []byte("\xef\xbb\xbf")) {
		return fmt.Errorf("%w: the file starts with a byte order mark", ErrUnsupported)
	}
	if bytes.IndexByte(data, '\r') >= 0 && bytes.Count(data, []byte("\r\n")) != bytes.Count(data, []byte("\r")) {
		return fmt.Errorf("%w: the file has carriage returns outside CRLF line endings", ErrUnsupported)
	}
	return nil
}

// checkVersion accepts KubeSphere 3.x. KubeKey takes the version from metadata.labels.version
// (cmd/kk/pkg/common/loader.go: "Unknown version" without it); ks-installer takes it from its
// image, so a cluster-configuration.yaml may go without.
func (f *File) checkVersion() error {
	if f.Version == "" {
		if f.Kind == KindKubeKey {
			return fmt.Errorf("%w: the ClusterConfiguration has no metadata.labels.version (KubeKey needs it, e.g. v3.4.1)", ErrVersion)
		}
		return nil
	}
	m := ksVersion.FindStringSubmatch(f.Version)
	switch {
	case m == nil:
		return fmt.Errorf("%w: metadata.labels.version %q is not a KubeSphere release (e.g. v3.4.1)", ErrVersion, f.Version)
	case m[1] == "3":
		return nil
	case m[1] >= "4" || len(m[1]) > 1:
		return fmt.Errorf("%w: metadata.labels.version %q is KubeSphere 4 or later, which is not installed by ks-installer and has no ClusterConfiguration; ks-mc sets up KubeSphere 3.x", ErrVersion, f.Version)
	default:
		return fmt.Errorf("%w: metadata.labels.version %q: ks-mc sets up KubeSphere 3.x multi-cluster", ErrVersion, f.Version)
	}
}

// nodeObject converts a node to JSON-compatible values the way kubectl reads YAML
// (sigs.k8s.io/yaml), so comparisons see what the API server would store.
func nodeObject(n *yaml.Node) (any, error) {
	b, err := yaml.Marshal(n)
	if err != nil {
		return nil, err
	}
	j, err := sigsyaml.YAMLToJSON(b)
	if err != nil {
		return nil, err
	}
	var v any
	d := json.NewDecoder(bytes.NewReader(j))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return normalizeNumbers(v), nil
}

func normalizeNumbers(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalizeNumbers(e)
		}
	case []any:
		for i, e := range t {
			t[i] = normalizeNumbers(e)
		}
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		if fl, err := t.Float64(); err == nil {
			return fl
		}
		return t.String()
	}
	return v
}

// MaxSize is the largest file Parse reads (KubeSphere's files are about 10 KiB).
const MaxSize = 1 << 20

// hasAlias reports whether the tree holds an alias: expanding aliases can blow a small file up
// exponentially, and KubeSphere's files use none.
func hasAlias(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode {
		return true
	}
	for _, c := range n.Content {
		if hasAlias(c) {
			return true
		}
	}
	return false
}

// mapValue returns the value node of key in a mapping node (nil when absent).
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func scalarAt(m *yaml.Node, key string) string {
	if v := mapValue(m, key); v != nil && v.Kind == yaml.ScalarNode {
		return v.Value
	}
	return ""
}
