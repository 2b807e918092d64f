// Command dist writes the release archives, checksums.txt and the rendered krew manifest of
// ks-mc. It is run by `make dist` and `make krew-manifest`; see docs/install.md.
//
// Archives are reproducible: entries are sorted, every entry has the same modification time
// (the commit time, passed as -mtime), uid/gid 0 with no user or group names and fixed modes,
// and the gzip header carries no file name and no time. The same binaries, LICENSE and helper
// therefore always give byte-identical archives.
//
//	dist archive -dir dist -version v1.2.3 -mtime 1700000000 -license LICENSE \
//	    -completion hack/kubectl_complete-ks_mc linux/amd64 windows/amd64 ...
//	dist krew-manifest -template .krew.yaml -dir dist -version v1.2.3 -out plugins.yaml
//	dist check-manifest .krew.yaml plugins.yaml
package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"
	"time"
)

// Binary is the plugin executable's name (kubectl finds `kubectl ks-mc` as kubectl-ks_mc).
const Binary = "kubectl-ks_mc"

// CompletionHelper is the file kubectl (>= 1.26) runs to complete `kubectl ks-mc`.
const CompletionHelper = "kubectl_complete-ks_mc"

// ChecksumsFile lists the sha256 of every archive, in `sha256sum -c` format.
const ChecksumsFile = "checksums.txt"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dist:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: dist archive|krew-manifest [flags]")
	}
	switch args[0] {
	case "archive":
		return runArchive(args[1:])
	case "krew-manifest":
		return runKrewManifest(args[1:])
	case "check-manifest":
		// dist check-manifest .krew.yaml plugins.yaml
		if len(args) != 3 {
			return errors.New("usage: dist check-manifest TEMPLATE RENDERED")
		}
		return checkManifestFile(args[1], args[2])
	}
	return fmt.Errorf("unknown subcommand %q: use archive, krew-manifest or check-manifest", args[0])
}

// Platform is one GOOS/GOARCH pair of the release.
type Platform struct{ OS, Arch string }

// ParsePlatform parses "linux/amd64".
func ParsePlatform(s string) (Platform, error) {
	os, arch, ok := strings.Cut(s, "/")
	if !ok || os == "" || arch == "" || strings.Contains(arch, "/") {
		return Platform{}, fmt.Errorf("platform %q: want GOOS/GOARCH", s)
	}
	return Platform{os, arch}, nil
}

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// Exe is the plugin's file name on p.
func (p Platform) Exe() string {
	if p.OS == "windows" {
		return Binary + ".exe"
	}
	return Binary
}

// BuildDir is where `make dist` puts p's binary under the dist directory.
func (p Platform) BuildDir(dist string) string {
	return filepath.Join(dist, "build", p.OS+"_"+p.Arch)
}

// ArchiveName is the release asset of p; .krew.yaml refers to the same names.
func ArchiveName(version string, p Platform) string {
	ext := ".tar.gz"
	if p.OS == "windows" {
		ext = ".zip"
	}
	return fmt.Sprintf("%s_%s_%s_%s%s", Binary, version, p.OS, p.Arch, ext)
}

// Entry is one file of an archive.
type Entry struct {
	Name string
	Mode int64 // permission bits
	Data []byte
}

func runArchive(args []string) error {
	fs := flag.NewFlagSet("archive", flag.ContinueOnError)
	dir := fs.String("dir", "dist", "dist directory: binaries are read from DIR/build/GOOS_GOARCH, archives written to DIR")
	version := fs.String("version", "", "release version (vX.Y.Z)")
	mtime := fs.Int64("mtime", 0, "modification time of every entry, seconds since the epoch (the commit time)")
	license := fs.String("license", "LICENSE", "license file to ship")
	helper := fs.String("completion", "hack/"+CompletionHelper, "kubectl completion helper to ship")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ValidateVersion(*version); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("no platforms given")
	}
	licenseData, err := os.ReadFile(*license)
	if err != nil {
		return err
	}
	helperData, err := os.ReadFile(*helper)
	if err != nil {
		return err
	}
	modTime := time.Unix(*mtime, 0).UTC()
	var names []string
	for _, s := range fs.Args() {
		p, err := ParsePlatform(s)
		if err != nil {
			return err
		}
		bin, err := os.ReadFile(filepath.Join(p.BuildDir(*dir), p.Exe()))
		if err != nil {
			return fmt.Errorf("read the %s binary (run the build first): %w", p, err)
		}
		entries := []Entry{
			{Name: p.Exe(), Mode: 0o755, Data: bin},
			{Name: "LICENSE", Mode: 0o644, Data: licenseData},
			{Name: CompletionHelper, Mode: 0o755, Data: helperData},
		}
		var buf bytes.Buffer
		if p.OS == "windows" {
			err = WriteZip(&buf, entries, modTime)
		} else {
			err = WriteTarGz(&buf, entries, modTime)
		}
		if err != nil {
			return fmt.Errorf("archive %s: %w", p, err)
		}
		name := ArchiveName(*version, p)
		if err := os.WriteFile(filepath.Join(*dir, name), buf.Bytes(), 0o644); err != nil {
			return err
		}
		names = append(names, name)
	}
	sums, err := Checksums(*dir, names)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, ChecksumsFile), []byte(sums), 0o644); err != nil {
		return err
	}
	fmt.Print(sums)
	return nil
}

var semverRE = regexp.MustCompile(`^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// ValidateVersion requires a "v"-prefixed semantic version, as krew does for spec.version.
func ValidateVersion(v string) error {
	if !semverRE.MatchString(v) {
		return fmt.Errorf("version %q is not a semantic version like v1.2.3: pass VERSION=vX.Y.Z", v)
	}
	return nil
}

func sortedEntries(entries []Entry) []Entry {
	out := append([]Entry(nil), entries...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// WriteTarGz writes a reproducible .tar.gz of entries.
func WriteTarGz(w io.Writer, entries []Entry, modTime time.Time) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	// No name, no modification time, no OS-specific fields in the gzip header.
	zw.Header = gzip.Header{OS: 255}
	tw := tar.NewWriter(zw)
	for _, e := range sortedEntries(entries) {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     e.Name,
			Mode:     e.Mode,
			Size:     int64(len(e.Data)),
			ModTime:  modTime,
			Format:   tar.FormatUSTAR,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// WriteZip writes a reproducible .zip of entries.
func WriteZip(w io.Writer, entries []Entry, modTime time.Time) error {
	zw := zip.NewWriter(w)
	for _, e := range sortedEntries(entries) {
		hdr := &zip.FileHeader{Name: e.Name, Method: zip.Deflate, Modified: modTime}
		hdr.SetMode(os.FileMode(e.Mode))
		f, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		if _, err := f.Write(e.Data); err != nil {
			return err
		}
	}
	return zw.Close()
}

// Checksums returns checksums.txt for the named files of dir, sorted by name.
func Checksums(dir string, names []string) (string, error) {
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	var b strings.Builder
	for _, n := range sorted {
		sum, err := FileSHA256(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s  %s\n", sum, n)
	}
	return b.String(), nil
}

// FileSHA256 is the lowercase hex sha256 of a file.
func FileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func runKrewManifest(args []string) error {
	fs := flag.NewFlagSet("krew-manifest", flag.ContinueOnError)
	tmpl := fs.String("template", ".krew.yaml", "krew-release-bot template")
	dir := fs.String("dir", "dist", "directory holding the archives the URIs name")
	version := fs.String("version", "", "release tag (vX.Y.Z)")
	out := fs.String("out", "plugins.yaml", "rendered manifest")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ValidateVersion(*version); err != nil {
		return err
	}
	text, err := os.ReadFile(*tmpl)
	if err != nil {
		return err
	}
	rendered, err := RenderKrewTemplate(string(text), *version, func(uri string) (string, error) {
		return FileSHA256(filepath.Join(*dir, path.Base(uri)))
	})
	if err != nil {
		return fmt.Errorf("render %s: %w", *tmpl, err)
	}
	return os.WriteFile(*out, rendered, 0o644)
}

// RenderKrewTemplate renders a .krew.yaml the way krew-release-bot does: the template sees
// {{ .TagName }}, and {{ addURIAndSha "URL template" .TagName }} expands to
// "uri: URL\n    sha256: SUM" with SUM from sha (given the rendered URL). {{ indent N s }} is
// supported too.
func RenderKrewTemplate(text, tag string, sha func(uri string) (string, error)) ([]byte, error) {
	values := struct {
		TagName string
		Version string
	}{tag, strings.TrimPrefix(tag, "v")}
	var shaErr error
	funcs := template.FuncMap{
		"addURIAndSha": func(url, tag string) (string, error) {
			t, err := template.New("url").Parse(url)
			if err != nil {
				return "", err
			}
			var b strings.Builder
			if err := t.Execute(&b, struct{ TagName, Version string }{tag, strings.TrimPrefix(tag, "v")}); err != nil {
				return "", err
			}
			sum, err := sha(b.String())
			if err != nil {
				shaErr = err
				return "", err
			}
			return fmt.Sprintf("uri: %s\n    sha256: %s", b.String(), sum), nil
		},
		"indent": func(spaces int, v string) string {
			v = strings.ReplaceAll(v, "    sha256:", "sha256:")
			pad := strings.Repeat(" ", spaces)
			return strings.TrimSpace(pad + strings.ReplaceAll(v, "\n", "\n"+pad))
		},
	}
	t, err := template.New("krew").Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, values); err != nil {
		if shaErr != nil {
			return nil, shaErr
		}
		return nil, err
	}
	return b.Bytes(), nil
}
