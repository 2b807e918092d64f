package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var entries = []Entry{
	{Name: "kubectl-ks_mc", Mode: 0o755, Data: bytes.Repeat([]byte("binary"), 1000)},
	{Name: "LICENSE", Mode: 0o644, Data: []byte("Apache License\n")},
	{Name: "kubectl_complete-ks_mc", Mode: 0o755, Data: []byte("#!/usr/bin/env sh\n")},
}

var commitTime = time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)

func TestTarGzReproducible(t *testing.T) {
	var a, b bytes.Buffer
	if err := WriteTarGz(&a, entries, commitTime); err != nil {
		t.Fatal(err)
	}
	// Same content in another order, at another wall-clock time: same bytes.
	time.Sleep(1100 * time.Millisecond)
	if err := WriteTarGz(&b, []Entry{entries[2], entries[0], entries[1]}, commitTime); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two writes of the same entries differ")
	}

	zr, err := gzip.NewReader(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() || zr.Comment != "" || zr.Extra != nil {
		t.Errorf("gzip header carries name %q / mtime %v / comment %q / extra %v", zr.Name, zr.ModTime, zr.Comment, zr.Extra)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d:%d (%q:%q), want 0:0 without names", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if !h.ModTime.Equal(commitTime) {
			t.Errorf("%s: mtime %v, want %v", h.Name, h.ModTime, commitTime)
		}
		want := int64(0o755)
		if h.Name == "LICENSE" {
			want = 0o644
		}
		if h.Mode != want || h.Typeflag != tar.TypeReg {
			t.Errorf("%s: mode %o type %c, want %o regular", h.Name, h.Mode, h.Typeflag, want)
		}
		data, _ := io.ReadAll(tr)
		for _, e := range entries {
			if e.Name == h.Name && !bytes.Equal(e.Data, data) {
				t.Errorf("%s: content differs", h.Name)
			}
		}
	}
	if want := []string{"LICENSE", "kubectl-ks_mc", "kubectl_complete-ks_mc"}; !reflect.DeepEqual(names, want) {
		t.Errorf("entries %v, want sorted %v", names, want)
	}
}

func TestZipReproducible(t *testing.T) {
	var a, b bytes.Buffer
	if err := WriteZip(&a, entries, commitTime); err != nil {
		t.Fatal(err)
	}
	if err := WriteZip(&b, []Entry{entries[1], entries[2], entries[0]}, commitTime); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two writes of the same entries differ")
	}
	zr, err := zip.NewReader(bytes.NewReader(a.Bytes()), int64(a.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		if !f.Modified.Equal(commitTime) {
			t.Errorf("%s: modified %v, want %v", f.Name, f.Modified, commitTime)
		}
		if f.Name == "kubectl-ks_mc" && f.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v, want 0755", f.Name, f.Mode())
		}
	}
	if want := []string{"LICENSE", "kubectl-ks_mc", "kubectl_complete-ks_mc"}; !reflect.DeepEqual(names, want) {
		t.Errorf("entries %v, want sorted %v", names, want)
	}
}

func TestArchiveCommand(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []Platform{{"linux", "amd64"}, {"windows", "amd64"}} {
		if err := os.MkdirAll(p.BuildDir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.BuildDir(dir), p.Exe()), []byte("bin-"+p.OS), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lic := filepath.Join(dir, "LICENSE")
	helper := filepath.Join(dir, CompletionHelper)
	os.WriteFile(lic, []byte("license"), 0o644)
	os.WriteFile(helper, []byte("#!/bin/sh"), 0o755)
	args := []string{"archive", "-dir", dir, "-version", "v1.2.3", "-mtime", "1763634600", "-license", lic, "-completion", helper, "windows/amd64", "linux/amd64"}
	if err := run(args); err != nil {
		t.Fatal(err)
	}
	sums, err := os.ReadFile(filepath.Join(dir, ChecksumsFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(sums)), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "  kubectl-ks_mc_v1.2.3_linux_amd64.tar.gz") || !strings.HasSuffix(lines[1], "  kubectl-ks_mc_v1.2.3_windows_amd64.zip") {
		t.Fatalf("checksums.txt:\n%s", sums)
	}
	sum, _ := FileSHA256(filepath.Join(dir, "kubectl-ks_mc_v1.2.3_windows_amd64.zip"))
	if lines[1] != sum+"  kubectl-ks_mc_v1.2.3_windows_amd64.zip" {
		t.Errorf("checksum line %q, want sha %s", lines[1], sum)
	}
	// A version krew would refuse is refused here already.
	if err := run([]string{"archive", "-dir", dir, "-version", "0d1953b-dirty", "linux/amd64"}); err == nil {
		t.Error("a non-semver version was accepted")
	}
}

func TestRenderKrewTemplate(t *testing.T) {
	tmpl := `spec:
  version: {{ .TagName }}
  platforms:
  - bin: kubectl-ks_mc
    {{addURIAndSha "https://example.com/download/{{ .TagName }}/kubectl-ks_mc_{{ .TagName }}_linux_amd64.tar.gz" .TagName }}
  - {{ indent 4 (addURIAndSha "https://example.com/{{ .TagName }}/b.zip" .TagName) }}
`
	var asked []string
	out, err := RenderKrewTemplate(tmpl, "v1.2.3", func(uri string) (string, error) {
		asked = append(asked, uri)
		return strings.Repeat("ab", 32), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `spec:
  version: v1.2.3
  platforms:
  - bin: kubectl-ks_mc
    uri: https://example.com/download/v1.2.3/kubectl-ks_mc_v1.2.3_linux_amd64.tar.gz
    sha256: ` + strings.Repeat("ab", 32) + `
  - uri: https://example.com/v1.2.3/b.zip
    sha256: ` + strings.Repeat("ab", 32) + `
`
	if string(out) != want {
		t.Errorf("rendered:\n%s\nwant:\n%s", out, want)
	}
	if len(asked) != 2 {
		t.Errorf("sha asked for %v", asked)
	}
	_, err = RenderKrewTemplate(tmpl, "v1.2.3", func(uri string) (string, error) { return "", os.ErrNotExist })
	if err == nil {
		t.Error("a missing archive was not reported")
	}
}
