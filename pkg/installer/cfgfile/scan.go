package cfgfile

import (
	"fmt"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"
)

// Locating nodes in the original bytes. yaml.v3 gives each node's line and column (1-based,
// columns counted in characters); the end of a node is found by scanning its text.

// offset returns the byte offset of a node's line and column.
func (f *File) offset(line, col int) (int, error) {
	if line < 1 || line > len(f.lines) || col < 1 {
		return 0, fmt.Errorf("%w: a node position is outside the file", ErrUnsupported)
	}
	off := f.lines[line-1]
	for i := 1; i < col; i++ {
		if off >= len(f.data) || f.data[off] == '\n' {
			return 0, fmt.Errorf("%w: a node position is outside its line", ErrUnsupported)
		}
		_, w := utf8.DecodeRune(f.data[off:])
		off += w
	}
	return off, nil
}

// nodeStart is the offset of a node's own text, after an anchor or a tag.
func (f *File) nodeStart(n *yaml.Node) (int, error) {
	off, err := f.offset(n.Line, n.Column)
	if err != nil {
		return 0, err
	}
	for off < len(f.data) && (f.data[off] == '&' || f.data[off] == '!') {
		for off < len(f.data) && !isSpace(f.data[off]) && f.data[off] != '\n' && f.data[off] != '\r' {
			off++
		}
		off = f.skipBlanks(off)
	}
	return off, nil
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' }

func (f *File) skipBlanks(off int) int {
	for off < len(f.data) && isSpace(f.data[off]) {
		off++
	}
	return off
}

// lineEnd is the offset of the line terminator ("\r\n" or "\n") of the line holding off, or the
// end of the file.
func (f *File) lineEnd(off int) int {
	i := off
	for i < len(f.data) && f.data[i] != '\n' {
		i++
	}
	if i < len(f.data) && i > 0 && f.data[i-1] == '\r' {
		return i - 1
	}
	return i
}

// nextLine is the offset after the line terminator of the line holding off (len(data) on the
// last line).
func (f *File) nextLine(off int) int {
	for off < len(f.data) && f.data[off] != '\n' {
		off++
	}
	if off < len(f.data) {
		off++
	}
	return off
}

// lineOf returns the 0-based line index holding off.
func (f *File) lineOf(off int) int {
	lo, hi := 0, len(f.lines)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if f.lines[mid] <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// indentOf returns the number of leading spaces of line i and whether the line is blank or
// a comment only (and the comment's column).
func (f *File) lineInfo(i int) (indent int, blank, comment bool) {
	off := f.lines[i]
	end := f.lineEnd(off)
	j := off
	for j < end && f.data[j] == ' ' {
		j++
	}
	indent = j - off
	if j == end {
		return indent, true, false
	}
	return indent, false, f.data[j] == '#'
}

// scalarEnd returns the end offset of the scalar whose text starts at off. parentCol is the
// column (0-based) of the key owning it, for block scalars.
func (f *File) scalarEnd(off int, n *yaml.Node, parentCol int, flow bool) (int, error) {
	d := f.data
	if off >= len(d) {
		return 0, fmt.Errorf("%w: a value is outside the file", ErrUnsupported)
	}
	switch d[off] {
	case '"':
		for i := off + 1; i < len(d); i++ {
			switch d[i] {
			case '\\':
				i++
			case '"':
				return i + 1, nil
			}
		}
		return 0, fmt.Errorf("%w: unterminated double-quoted value", ErrUnsupported)
	case '\'':
		for i := off + 1; i < len(d); i++ {
			if d[i] == '\'' {
				if i+1 < len(d) && d[i+1] == '\'' {
					i++
					continue
				}
				return i + 1, nil
			}
		}
		return 0, fmt.Errorf("%w: unterminated single-quoted value", ErrUnsupported)
	case '|', '>':
		if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			end := f.lineEnd(off)
			for i := f.lineOf(off) + 1; i < len(f.lines); i++ {
				if f.lines[i] >= len(d) {
					break
				}
				ind, blank, _ := f.lineInfo(i)
				if blank {
					continue
				}
				if ind <= parentCol {
					break
				}
				end = f.lineEnd(f.lines[i])
			}
			return end, nil
		}
	}
	// Plain scalar (or an alias): to a comment, the line's end or, in flow context, an indicator.
	end := f.plainLineEnd(off, flow)
	text := string(d[off:end])
	if n.Kind == yaml.AliasNode || text == n.Value {
		return end, nil
	}
	// A multi-line plain scalar: continuation lines are folded into single spaces.
	got := text
	for i := f.lineOf(off) + 1; i < len(f.lines) && len(got) < len(n.Value); i++ {
		if f.lines[i] >= len(d) {
			break
		}
		_, blank, comment := f.lineInfo(i)
		if blank || comment {
			break
		}
		s := f.skipBlanks(f.lines[i])
		e := f.plainLineEnd(s, flow)
		got += " " + string(d[s:e])
		end = e
	}
	if got != n.Value {
		return 0, fmt.Errorf("%w: a value at line %d could not be located in the text", ErrUnsupported, n.Line)
	}
	return end, nil
}

func (f *File) plainLineEnd(off int, flow bool) int {
	d := f.data
	le := f.lineEnd(off)
	end := off
	for i := off; i < le; i++ {
		c := d[i]
		if c == '#' && i > off && isSpace(d[i-1]) {
			break
		}
		if flow && (c == ',' || c == ']' || c == '}') {
			break
		}
		if c == ':' && (i+1 >= le || isSpace(d[i+1]) || (flow && (d[i+1] == ',' || d[i+1] == '}' || d[i+1] == ']'))) {
			break
		}
		if !isSpace(c) {
			end = i + 1
		}
	}
	return end
}

// flowEnd returns the offset after the bracket closing the flow collection opened at off.
func (f *File) flowEnd(off int) (int, error) {
	d := f.data
	depth := 0
	for i := off; i < len(d); i++ {
		switch d[i] {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1, nil
			}
		case '"', '\'':
			e, err := f.scalarEnd(i, &yaml.Node{Kind: yaml.ScalarNode}, 0, true)
			if err != nil {
				return 0, err
			}
			i = e - 1
		case '#':
			if i > 0 && (isSpace(d[i-1]) || d[i-1] == '\n') {
				i = f.lineEnd(i) - 1
			}
		}
	}
	return 0, fmt.Errorf("%w: unterminated flow collection", ErrUnsupported)
}

// nodeEnd returns the end offset of a node's text. parentCol is the column of the key or
// sequence dash owning it.
func (f *File) nodeEnd(n *yaml.Node, parentCol int, flow bool) (int, error) {
	if (n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode) && (flow || n.Style&yaml.FlowStyle != 0) {
		off, err := f.nodeStart(n)
		if err != nil {
			return 0, err
		}
		if off >= len(f.data) || (f.data[off] != '{' && f.data[off] != '[') {
			return 0, fmt.Errorf("%w: a flow collection at line %d could not be located", ErrUnsupported, n.Line)
		}
		return f.flowEnd(off)
	}
	switch n.Kind {
	case yaml.MappingNode:
		if len(n.Content) < 2 {
			return 0, fmt.Errorf("%w: an empty block mapping at line %d", ErrUnsupported, n.Line)
		}
		k, v := n.Content[len(n.Content)-2], n.Content[len(n.Content)-1]
		return f.entryEnd(k, v, flow)
	case yaml.SequenceNode:
		if len(n.Content) == 0 {
			return 0, fmt.Errorf("%w: an empty block sequence at line %d", ErrUnsupported, n.Line)
		}
		last := n.Content[len(n.Content)-1]
		if isEmptyNull(last) {
			// "-" alone: the dash's line.
			return f.lineEnd(f.lines[last.Line-1]), nil
		}
		return f.nodeEnd(last, n.Column-1, flow)
	default:
		off, err := f.nodeStart(n)
		if err != nil {
			return 0, err
		}
		return f.scalarEnd(off, n, parentCol, flow)
	}
}

// entryEnd is the end offset of a mapping entry (its value, or the key's colon when the value
// is empty).
func (f *File) entryEnd(k, v *yaml.Node, flow bool) (int, error) {
	if isEmptyNull(v) {
		return f.colonEnd(k, flow)
	}
	return f.nodeEnd(v, k.Column-1, flow)
}

// colonEnd is the offset after the ':' that follows key k.
func (f *File) colonEnd(k *yaml.Node, flow bool) (int, error) {
	if k.Kind != yaml.ScalarNode || k.Style&yaml.TaggedStyle != 0 || k.Anchor != "" {
		return 0, fmt.Errorf("%w: a complex mapping key at line %d", ErrUnsupported, k.Line)
	}
	off, err := f.nodeStart(k)
	if err != nil {
		return 0, err
	}
	e, err := f.scalarEnd(off, k, k.Column-1, flow)
	if err != nil {
		return 0, err
	}
	e = f.skipBlanks(e)
	if e >= len(f.data) || f.data[e] != ':' {
		return 0, fmt.Errorf("%w: the key at line %d is not followed by ':'", ErrUnsupported, k.Line)
	}
	return e + 1, nil
}

func isEmptyNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null" && n.Value == "" && n.Style == 0
}
