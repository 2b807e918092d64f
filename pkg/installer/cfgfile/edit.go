package cfgfile

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// RedactedValue replaces secret values in what is shown (diffs, printed results).
const RedactedValue = "<redacted>"

// Edit sets one value of the ClusterConfiguration. Path starts at the document's root, e.g.
// spec, multicluster, clusterRole. Value is a string, an int64 or a bool.
type Edit struct {
	Path  []string
	Value any
}

// Where KubeSphere's own files put the keys (ks-installer deploy/cluster-configuration.yaml and
// KubeKey's cc_v341 template, v3.4.1): a missing key is added at its place in this order.
var canonicalOrder = map[string][]string{
	"": {"apiVersion", "kind", "metadata", "spec"},
	"spec": {"persistence", "authentication", "local_registry", "dev_tag", "etcd", "common", "alerting", "auditing",
		"devops", "events", "logging", "metrics_server", "monitoring", "multicluster", "network", "openpitrix",
		"servicemesh", "kubeedge", "edgeruntime", "gatekeeper", "terminal", "zone"},
	"spec.authentication": {"adminPassword", "jwtSecret", "oauthOptions"},
	"spec.multicluster":   {"clusterRole", "proxyPublishAddress", "hostClusterName"},
}

type tree struct {
	keys []string
	kids map[string]*tree
	leaf *Edit
}

func (t *tree) child(k string) *tree {
	if t.kids == nil {
		t.kids = map[string]*tree{}
	}
	c, ok := t.kids[k]
	if !ok {
		c = &tree{}
		t.kids[k] = c
		t.keys = append(t.keys, k)
	}
	return c
}

type splice struct {
	start, end int
	text       string
	seq        int
}

type editor struct {
	f       *File
	step    int
	splices []splice
}

// Apply returns the file with the edits made. It changes nothing but the edited values (and the
// keys it has to add), and checks the result by parsing it again.
func (f *File) Apply(edits []Edit) ([]byte, error) {
	root := &tree{}
	for _, e := range edits {
		if len(e.Path) == 0 {
			return nil, fmt.Errorf("%w: an empty path", ErrUnsupported)
		}
		t := root
		for _, k := range e.Path {
			if t.leaf != nil {
				return nil, fmt.Errorf("%w: conflicting edits at %s", ErrUnsupported, strings.Join(e.Path, "."))
			}
			t = t.child(k)
		}
		if t.leaf != nil || len(t.keys) > 0 {
			return nil, fmt.Errorf("%w: conflicting edits at %s", ErrUnsupported, strings.Join(e.Path, "."))
		}
		e := e
		t.leaf = &e
	}
	ed := &editor{f: f, step: f.indentStep()}
	if err := ed.mapping(f.cc, root, nil, false, false); err != nil {
		return nil, err
	}
	out := ed.result()
	if err := f.verify(out, edits); err != nil {
		return nil, err
	}
	return out, nil
}

// indentStep is the file's indentation unit: the column of spec's keys minus that of the root's.
func (f *File) indentStep() int {
	spec := mapValue(f.cc, "spec")
	if spec != nil && spec.Kind == yaml.MappingNode && spec.Style&yaml.FlowStyle == 0 && len(spec.Content) > 0 && len(f.cc.Content) > 0 {
		if d := spec.Content[0].Column - f.cc.Content[0].Column; d > 0 && d <= 8 {
			return d
		}
	}
	return 2
}

func (ed *editor) add(start, end int, text string) {
	ed.splices = append(ed.splices, splice{start: start, end: end, text: text, seq: len(ed.splices)})
}

func (ed *editor) result() []byte {
	sort.SliceStable(ed.splices, func(i, j int) bool {
		if ed.splices[i].start != ed.splices[j].start {
			return ed.splices[i].start < ed.splices[j].start
		}
		return ed.splices[i].seq < ed.splices[j].seq
	})
	var b bytes.Buffer
	pos := 0
	for _, s := range ed.splices {
		b.Write(ed.f.data[pos:s.start])
		b.WriteString(s.text)
		pos = s.end
	}
	b.Write(ed.f.data[pos:])
	return b.Bytes()
}

// mapping applies t to the mapping node m. flow: inside a flow collection; jsonish: flow keys
// are double-quoted (a JSON file), so new keys and strings are too.
func (ed *editor) mapping(m *yaml.Node, t *tree, path []string, flow, jsonish bool) error {
	if m.Style&yaml.FlowStyle != 0 {
		flow = true
		if len(m.Content) > 0 && m.Content[0].Style&yaml.DoubleQuotedStyle != 0 {
			jsonish = true
		}
	}
	var missing []string
	for _, k := range t.keys {
		sub := t.kids[k]
		kn, vn := findEntry(m, k)
		p := append(append([]string{}, path...), k)
		if kn == nil {
			missing = append(missing, k)
			continue
		}
		if err := ed.entry(kn, vn, sub, p, flow, jsonish); err != nil {
			return err
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if flow {
		return ed.insertFlow(m, t, missing, jsonish)
	}
	return ed.insertBlock(m, t, missing, path)
}

func findEntry(m *yaml.Node, key string) (*yaml.Node, *yaml.Node) {
	var k, v *yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		if c := m.Content[i]; c.Kind == yaml.ScalarNode && c.Value == key && c.Tag != "!!merge" {
			k, v = c, m.Content[i+1]
		}
	}
	return k, v
}

func (ed *editor) entry(kn, vn *yaml.Node, sub *tree, path []string, flow, jsonish bool) error {
	f := ed.f
	name := strings.Join(path, ".")
	if vn.Kind == yaml.AliasNode || vn.Anchor != "" || vn.Style&yaml.TaggedStyle != 0 {
		return fmt.Errorf("%w: %s has an anchor, alias or tag: edit it by hand", ErrUnsupported, name)
	}
	if sub.leaf != nil {
		return ed.leafEntry(kn, vn, sub, name, flow, jsonish)
	}
	switch {
	case vn.Kind == yaml.MappingNode:
		return ed.mapping(vn, sub, path, flow, jsonish)
	case isEmptyNull(vn):
		c, err := f.colonEnd(kn, flow)
		if err != nil {
			return err
		}
		if flow {
			text, err := ed.renderFlow(sub, jsonish, path)
			if err != nil {
				return err
			}
			ed.add(c, c, " "+text)
			return nil
		}
		lines, err := ed.renderBlock(sub, kn.Column-1+ed.step, path)
		if err != nil {
			return err
		}
		le := f.lineEnd(c)
		ed.add(le, le, f.nl+strings.Join(lines, f.nl))
		return nil
	case vn.Kind == yaml.ScalarNode && vn.Tag == "!!null" && vn.Style&(yaml.LiteralStyle|yaml.FoldedStyle) == 0:
		start, end, err := f.scalarSpan(kn, vn, flow)
		if err != nil {
			return err
		}
		text, err := ed.renderFlow(sub, jsonish, path)
		if err != nil {
			return err
		}
		ed.add(start, end, text)
		return nil
	}
	return fmt.Errorf("%w: %s is not a mapping", ErrUnsupported, name)
}

// scalarSpan is where the scalar value vn of key kn starts and ends in the file.
func (f *File) scalarSpan(kn, vn *yaml.Node, flow bool) (start, end int, err error) {
	if start, err = f.nodeStart(vn); err != nil {
		return 0, 0, err
	}
	end, err = f.scalarEnd(start, vn, kn.Column-1, flow)
	return start, end, err
}

// leafEntry replaces (or fills in) the single value of key kn.
func (ed *editor) leafEntry(kn, vn *yaml.Node, sub *tree, name string, flow, jsonish bool) error {
	f := ed.f
	if vn.Kind != yaml.ScalarNode {
		return fmt.Errorf("%w: %s is not a single value", ErrUnsupported, name)
	}
	if isEmptyNull(vn) {
		text, err := renderScalar(sub.leaf.Value, 0, flow, jsonish, name)
		if err != nil {
			return err
		}
		c, err := f.colonEnd(kn, flow)
		if err != nil {
			return err
		}
		ed.add(c, c, " "+text)
		return nil
	}
	if vn.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return fmt.Errorf("%w: %s is a block scalar: edit it by hand", ErrUnsupported, name)
	}
	start, end, err := f.scalarSpan(kn, vn, flow)
	if err != nil {
		return err
	}
	if f.lineOf(start) != f.lineOf(end) {
		return fmt.Errorf("%w: %s spans lines: edit it by hand", ErrUnsupported, name)
	}
	style := vn.Style
	if vn.Tag == "!!null" {
		style = 0 // "~" or "null": write the new value as a new one
	}
	text, err := renderScalar(sub.leaf.Value, style, flow, jsonish, name)
	if err != nil {
		return err
	}
	ed.add(start, end, text)
	return nil
}

// laterKey is the first key of m that KubeSphere's order puts after rank r (nil when none).
func laterKey(m *yaml.Node, rank func(string) int, r int) *yaml.Node {
	if r < 0 {
		return nil
	}
	var next *yaml.Node
	best := -1
	for i := 0; i+1 < len(m.Content); i += 2 {
		if kr := rank(m.Content[i].Value); kr > r && (best < 0 || kr < best) {
			best, next = kr, m.Content[i]
		}
	}
	return next
}

// insertBlock adds the missing keys to block mapping m, each where KubeSphere's files put it.
func (ed *editor) insertBlock(m *yaml.Node, t *tree, missing, path []string) error {
	f := ed.f
	if len(m.Content) < 2 {
		return fmt.Errorf("%w: an empty block mapping", ErrUnsupported)
	}
	col := m.Content[0].Column - 1
	order := canonicalOrder[strings.Join(path, ".")]
	rank := func(k string) int {
		for i, o := range order {
			if o == k {
				return i
			}
		}
		return -1
	}
	for _, k := range missing {
		lines, err := ed.renderBlock(&tree{keys: []string{k}, kids: map[string]*tree{k: t.kids[k]}}, col, path)
		if err != nil {
			return err
		}
		r := rank(k)
		// Before the first existing key that KubeSphere puts after it...
		next := laterKey(m, rank, r)
		if next != nil {
			at := f.lines[next.Line-1]
			// Comment lines right above it, at its indentation, belong to it.
			for li := next.Line - 2; li >= 0 && li > m.Line-1; li-- {
				ind, _, comment := f.lineInfo(li)
				if !comment || ind != col {
					break
				}
				at = f.lines[li]
			}
			ed.add(at, at, strings.Join(lines, f.nl)+f.nl)
			continue
		}
		// ...else after the last existing key KubeSphere puts before it, else at the end.
		var prevK, prevV *yaml.Node
		best := -1
		for i := 0; i+1 < len(m.Content); i += 2 {
			if kr := rank(m.Content[i].Value); r >= 0 && kr >= 0 && kr < r && kr > best {
				best, prevK, prevV = kr, m.Content[i], m.Content[i+1]
			}
		}
		if prevK == nil {
			prevK, prevV = m.Content[len(m.Content)-2], m.Content[len(m.Content)-1]
		}
		end, err := f.entryEnd(prevK, prevV, false)
		if err != nil {
			return err
		}
		li := f.lineOf(max(end-1, 0))
		if end > 0 && f.data[end-1] == '\n' {
			li = f.lineOf(end - 1)
		}
		// Comment lines indented deeper than the mapping belong to the entry before.
		for li+1 < len(f.lines) && f.lines[li+1] < len(f.data) {
			ind, _, comment := f.lineInfo(li + 1)
			if !comment || ind <= col {
				break
			}
			li++
		}
		eol := f.lineEnd(f.lines[li])
		if eol == len(f.data) {
			ed.add(eol, eol, f.nl+strings.Join(lines, f.nl))
		} else {
			at := f.nextLine(eol)
			ed.add(at, at, strings.Join(lines, f.nl)+f.nl)
		}
	}
	return nil
}

// insertFlow adds the missing keys before the closing brace of flow mapping m.
func (ed *editor) insertFlow(m *yaml.Node, t *tree, missing []string, jsonish bool) error {
	f := ed.f
	var parts []string
	for _, k := range missing {
		text, err := ed.renderFlowEntry(k, t.kids[k], jsonish, nil)
		if err != nil {
			return err
		}
		parts = append(parts, text)
	}
	if len(m.Content) == 0 {
		off, err := f.nodeStart(m)
		if err != nil {
			return err
		}
		if off >= len(f.data) || f.data[off] != '{' {
			return fmt.Errorf("%w: a flow mapping at line %d could not be located", ErrUnsupported, m.Line)
		}
		ed.add(off+1, off+1, strings.Join(parts, ", "))
		return nil
	}
	end, err := f.entryEnd(m.Content[len(m.Content)-2], m.Content[len(m.Content)-1], true)
	if err != nil {
		return err
	}
	ed.add(end, end, ", "+strings.Join(parts, ", "))
	return nil
}

func sortedKeys(t *tree, path []string) []string {
	order := canonicalOrder[strings.Join(path, ".")]
	keys := append([]string{}, t.keys...)
	rank := func(k string) int {
		for i, o := range order {
			if o == k {
				return i
			}
		}
		return len(order)
	}
	sort.SliceStable(keys, func(i, j int) bool { return rank(keys[i]) < rank(keys[j]) })
	return keys
}

// renderBlock renders the entries of t as block lines at indentation col.
func (ed *editor) renderBlock(t *tree, col int, path []string) ([]string, error) {
	var lines []string
	ind := strings.Repeat(" ", col)
	for _, k := range sortedKeys(t, path) {
		sub := t.kids[k]
		p := append(append([]string{}, path...), k)
		if err := checkKey(k); err != nil {
			return nil, err
		}
		if sub.leaf != nil {
			text, err := renderScalar(sub.leaf.Value, newStyle(p), false, false, strings.Join(p, "."))
			if err != nil {
				return nil, err
			}
			lines = append(lines, ind+k+": "+text)
			continue
		}
		lines = append(lines, ind+k+":")
		more, err := ed.renderBlock(sub, col+ed.step, p)
		if err != nil {
			return nil, err
		}
		lines = append(lines, more...)
	}
	return lines, nil
}

func (ed *editor) renderFlow(t *tree, jsonish bool, path []string) (string, error) {
	var parts []string
	for _, k := range sortedKeys(t, path) {
		text, err := ed.renderFlowEntry(k, t.kids[k], jsonish, path)
		if err != nil {
			return "", err
		}
		parts = append(parts, text)
	}
	return "{" + strings.Join(parts, ", ") + "}", nil
}

func (ed *editor) renderFlowEntry(k string, sub *tree, jsonish bool, path []string) (string, error) {
	if err := checkKey(k); err != nil {
		return "", err
	}
	key := k
	if jsonish {
		key = strconv.Quote(k)
	}
	p := append(append([]string{}, path...), k)
	if sub.leaf != nil {
		text, err := renderScalar(sub.leaf.Value, newStyle(p), true, jsonish, strings.Join(p, "."))
		if err != nil {
			return "", err
		}
		return key + ": " + text, nil
	}
	text, err := ed.renderFlow(sub, jsonish, p)
	if err != nil {
		return "", err
	}
	return key + ": " + text, nil
}
