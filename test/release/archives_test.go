//go:build release

package release

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

type archiveFile struct {
	mode int64
	data []byte
}

func readArchive(t *testing.T, path string) (names []string, files map[string]archiveFile) {
	t.Helper()
	files = map[string]archiveFile{}
	if strings.HasSuffix(path, ".zip") {
		zr, err := zip.OpenReader(path)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		for _, f := range zr.File {
			rc, err := f.Open()
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(rc)
			rc.Close()
			names = append(names, f.Name)
			files[f.Name] = archiveFile{int64(f.Mode().Perm()), data}
		}
		return names, files
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("%s: gzip header has name %q, mtime %v", path, zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: %s owned by %d:%d %q:%q", path, h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		data, _ := io.ReadAll(tr)
		names = append(names, h.Name)
		files[h.Name] = archiveFile{h.Mode, data}
	}
	return names, files
}

// TestArchives checks checksums.txt and every archive: the three files, their modes, and a
// binary built for the archive's platform.
func TestArchives(t *testing.T) {
	sums, err := os.ReadFile(filepath.Join(distDir, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("checksums.txt line %q", line)
		}
		raw, err := os.ReadFile(filepath.Join(distDir, name))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(raw)
		if hex.EncodeToString(h[:]) != sum {
			t.Errorf("checksums.txt: %s has sha256 %x, listed %s", name, h, sum)
		}
		listed = append(listed, name)
	}
	var want []string
	for _, p := range releasePlatfms {
		want = append(want, archiveName(p))
	}
	sort.Strings(want)
	if !reflect.DeepEqual(listed, want) {
		t.Fatalf("checksums.txt lists %v, want %v", listed, want)
	}

	license, _ := os.ReadFile(filepath.Join(repoRoot, "LICENSE"))
	helper, _ := os.ReadFile(filepath.Join(repoRoot, "hack", "kubectl_complete-ks_mc"))
	if !bytes.Contains(license, []byte("Apache License")) || !bytes.Contains(license, []byte("Version 2.0")) {
		t.Error("LICENSE is not the Apache License 2.0")
	}
	for _, p := range releasePlatfms {
		osName, _ := splitPlatform(p)
		exe := "kubectl-ks_mc"
		if osName == "windows" {
			exe += ".exe"
		}
		names, files := readArchive(t, filepath.Join(distDir, archiveName(p)))
		if wantNames := []string{"LICENSE", exe, "kubectl_complete-ks_mc"}; !reflect.DeepEqual(names, wantNames) {
			t.Errorf("%s holds %v, want %v (sorted)", p, names, wantNames)
			continue
		}
		if f := files["LICENSE"]; !bytes.Equal(f.data, license) || f.mode != 0o644 {
			t.Errorf("%s: LICENSE differs or mode %o", p, f.mode)
		}
		if f := files["kubectl_complete-ks_mc"]; !bytes.Equal(f.data, helper) || f.mode != 0o755 {
			t.Errorf("%s: completion helper differs or mode %o", p, f.mode)
		}
		bin := files[exe]
		if bin.mode != 0o755 {
			t.Errorf("%s: %s mode %o, want 755", p, exe, bin.mode)
		}
		if got := binaryPlatform(bin.data); got != p {
			t.Errorf("%s: %s is a %s binary", p, exe, got)
		}
	}
}

// binaryPlatform reads GOOS/GOARCH from an executable's headers.
func binaryPlatform(b []byte) string {
	r := bytes.NewReader(b)
	if f, err := elf.NewFile(r); err == nil {
		switch f.Machine {
		case elf.EM_X86_64:
			return "linux/amd64"
		case elf.EM_AARCH64:
			return "linux/arm64"
		}
		return "linux/" + f.Machine.String()
	}
	if f, err := macho.NewFile(r); err == nil {
		switch f.Cpu {
		case macho.CpuAmd64:
			return "darwin/amd64"
		case macho.CpuArm64:
			return "darwin/arm64"
		}
		return "darwin/" + f.Cpu.String()
	}
	if f, err := pe.NewFile(r); err == nil {
		if f.Machine == pe.IMAGE_FILE_MACHINE_AMD64 {
			return "windows/amd64"
		}
		return "windows/other"
	}
	return "unknown"
}

// TestRenderedManifestMatchesTemplate: the plugins.yaml that make krew-manifest rendered for
// this build agrees with .krew.yaml, and its sha256 are those of the archives.
func TestRenderedManifestMatchesTemplate(t *testing.T) {
	out, err := goRun(t, "../../hack/dist", "check-manifest", filepath.Join(repoRoot, ".krew.yaml"), renderedKrew)
	if err != nil {
		t.Fatalf("check-manifest: %v\n%s", err, out)
	}
	m := readManifest(t, renderedKrew)
	if m.Spec.Version != version {
		t.Errorf("spec.version %q, want %q", m.Spec.Version, version)
	}
	if len(m.Spec.Platforms) != len(releasePlatfms) {
		t.Fatalf("%d platforms, want %d", len(m.Spec.Platforms), len(releasePlatfms))
	}
	for _, p := range m.Spec.Platforms {
		name := filepath.Base(p.URI)
		raw, err := os.ReadFile(filepath.Join(distDir, name))
		if err != nil {
			t.Fatalf("uri %s names no archive of dist: %v", p.URI, err)
		}
		h := sha256.Sum256(raw)
		if p.SHA256 != hex.EncodeToString(h[:]) {
			t.Errorf("%s: sha256 %s, archive has %x", name, p.SHA256, h)
		}
		if want := "https://github.com/ks-mc/ks-mc/releases/download/" + version + "/" + name; p.URI != want {
			t.Errorf("uri %s, want %s", p.URI, want)
		}
	}
}
