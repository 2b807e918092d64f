//go:build release

package release

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type imageFile struct {
	hdr  *tar.Header
	data []byte
}

// filesystem flattens the image's layers.
func filesystem(t *testing.T, img v1.Image) map[string]imageFile {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]imageFile{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[strings.TrimSuffix(strings.TrimPrefix(h.Name, "/"), "/")] = imageFile{h, data}
	}
	return files
}

// checkImage verifies one platform image: config, non-root user, and the static binary.
func checkImage(t *testing.T, img v1.Image, arch string) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != arch {
		t.Errorf("config platform %s/%s, want linux/%s", cf.OS, cf.Architecture, arch)
	}
	if !reflect.DeepEqual(cf.Config.Entrypoint, []string{"/kubectl-ks_mc"}) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/kubectl-ks_mc] and no cmd", cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (non-root)", cf.Config.User)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != version {
		t.Errorf("version label %q, want %q", cf.Config.Labels["org.opencontainers.image.version"], version)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		t.Errorf("manifest media type %s", mt)
	}

	files := filesystem(t, img)
	bin, ok := files["kubectl-ks_mc"]
	if !ok {
		var names []string
		for n := range files {
			names = append(names, n)
		}
		t.Fatalf("no /kubectl-ks_mc in the image (files: %v)", names)
	}
	if bin.hdr.Typeflag != tar.TypeReg || bin.hdr.Mode&0o111 == 0 || bin.hdr.Uid != 0 {
		t.Errorf("/kubectl-ks_mc: type %c mode %o uid %d, want an executable root-owned file", bin.hdr.Typeflag, bin.hdr.Mode, bin.hdr.Uid)
	}
	built, err := os.ReadFile(filepath.Join(distDir, "build", "linux_"+arch, "kubectl-ks_mc"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bin.data, built) {
		t.Errorf("/kubectl-ks_mc differs from the linux/%s build", arch)
	}
	f, err := elf.NewFile(bytes.NewReader(bin.data))
	if err != nil {
		t.Fatalf("/kubectl-ks_mc is not ELF: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("/kubectl-ks_mc is dynamically linked: the image has no libc")
		}
	}
	passwd := string(files["etc/passwd"].data)
	if !strings.Contains(passwd, ":65532:65532:") {
		t.Errorf("/etc/passwd has no user 65532:\n%s", passwd)
	}
	if tmp, ok := files["tmp"]; !ok || tmp.hdr.Mode&0o1777 != 0o1777 {
		t.Error("/tmp missing or not world-writable with sticky bit")
	}
}

// TestImageLayout loads the OCI layout back: one multi-platform index named REPO:VERSION.
func TestImageLayout(t *testing.T) {
	p, err := layout.FromPath(filepath.Join(distDir, "image"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || !im.Manifests[0].MediaType.IsIndex() {
		t.Fatalf("index.json holds %d entries (%v), want one image index", len(im.Manifests), im.Manifests)
	}
	if ref := im.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; ref != imageRepo+":"+version {
		t.Errorf("ref.name %q, want %s:%s", ref, imageRepo, version)
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range m.Manifests {
		if d.Platform == nil {
			t.Fatalf("manifest %s has no platform", d.Digest)
		}
		platforms = append(platforms, d.Platform.OS+"/"+d.Platform.Architecture)
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(d.Platform.Architecture, func(t *testing.T) { checkImage(t, img, d.Platform.Architecture) })
	}
	if want := []string{"linux/amd64", "linux/arm64"}; !reflect.DeepEqual(platforms, want) {
		t.Errorf("platforms %v, want %v", platforms, want)
	}
}

// TestImageTarball loads dist/image.tar (what `crane push dist/image.tar REF` pushes) and
// runs its binary: the default image it renders is this image.
func TestImageTarball(t *testing.T) {
	tag, err := name.NewTag(imageRepo + ":" + version)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(filepath.Join(distDir, "image.tar"), &tag)
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, img, "amd64")

	bin := filepath.Join(t.TempDir(), "kubectl-ks_mc")
	if err := os.WriteFile(bin, filesystem(t, img)["kubectl-ks_mc"].data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version", "-o", "json").Output()
	if err != nil {
		t.Fatalf("image binary version: %v", err)
	}
	var info struct{ Version, Image string }
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.Version != version || info.Image != tag.String() {
		t.Errorf("image binary reports version %q image %q, want %q and %q", info.Version, info.Image, version, tag)
	}
}
