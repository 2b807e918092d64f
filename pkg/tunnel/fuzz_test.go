package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
)

// FuzzStreamHeader feeds arbitrary bytes to the agent's stream header parser and the proxy's
// answer parser. Seeds: testdata/fuzz/FuzzStreamHeader (replayed by every `go test`).
func FuzzStreamHeader(f *testing.F) {
	for _, s := range []string{
		"KSMC1 kubernetes cert\n", "KSMC1 kubernetes token\nGET / HTTP/1.1\r\n\r\n", "KSMC1 kubesphere none\n",
		"KSMC1 control goaway\n", "KSMC1 kubernetes none\n", "KSMC1  \n", "KSMC2 kubernetes cert\n", "\n", "",
		"OK\n", "ERR unknown-target\n", "ERR going-away\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := readStreamHeader(bufio.NewReaderSize(bytes.NewReader(in), 64))
		if err == nil {
			if verr := h.Validate(); verr != nil {
				t.Fatalf("accepted an invalid header %+v: %v", h, verr)
			}
			if !bytes.HasPrefix(in, h.encode()) {
				t.Fatalf("accepted %q, which does not start with its encoding %q", in, h.encode())
			}
		} else if !errors.Is(err, ErrBadStreamHeader) && !errors.Is(err, ErrUnknownTarget) && len(bytes.TrimRight(in, "\n")) > 0 && bytes.IndexByte(in, '\n') >= 0 && bytes.IndexByte(in, '\n') <= maxHeaderLine {
			t.Fatalf("header %q: error %v wraps no sentinel", in, err)
		}
		// Whatever the agent answers to it, the proxy reads back the same class of error.
		var ans bytes.Buffer
		if werr := writeAnswer(&ans, err); werr != nil {
			t.Fatal(werr)
		}
		line, lerr := readLine(bufio.NewReader(&ans))
		if lerr != nil {
			t.Fatalf("read own answer %q: %v", ans.String(), lerr)
		}
		perr := parseAnswer(line)
		if (err == nil) != (perr == nil) {
			t.Fatalf("answer %q to %v parsed as %v", line, err, perr)
		}
		// The answer parser itself must not panic on anything.
		if l, e := readLine(bufio.NewReader(bytes.NewReader(in))); e == nil {
			_ = parseAnswer(l)
		}
	})
}
