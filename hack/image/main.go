// Command image builds the ks-mc agent/proxy container image without a container engine.
//
// The image is the static linux binary on an otherwise empty base: /etc/passwd and /etc/group
// with a non-root user (nonroot, 65532), /home/nonroot and /tmp. Entrypoint /kubectl-ks_mc; the
// rendered Deployments pass the mode as args (["proxy", ...], ["agent", ...]).
//
// Output (all reproducible, timestamps are the commit time given as -mtime):
//
//	DIR/image/      OCI image layout; index.json holds one multi-platform image index
//	                annotated with org.opencontainers.image.ref.name=REPOSITORY:TAG
//	DIR/image.tar   docker-save style tarball of the linux/amd64 image (or the first platform)
//
// Binaries are read from DIR/build/linux_ARCH/kubectl-ks_mc (as `make image` builds them).
// Push with crane: `crane push --index=false DIR/image.tar REF` or `crane push DIR/image REF`.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// Binary is the image's only program and its entrypoint.
	Binary = "kubectl-ks_mc"
	// User is the non-root user the container runs as.
	User = "65532:65532"
	// RefNameAnnotation names the image in an OCI layout's index.json.
	RefNameAnnotation = "org.opencontainers.image.ref.name"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	dir := fs.String("dir", "dist", "dist directory (binaries in DIR/build/linux_ARCH, output in DIR)")
	repository := fs.String("repository", "ghcr.io/ks-mc/ks-mc", "image repository")
	tag := fs.String("tag", "", "image tag: the version the binary is stamped with")
	mtime := fs.Int64("mtime", 0, "creation and file time, seconds since the epoch (the commit time)")
	revision := fs.String("revision", "", "git commit, recorded as org.opencontainers.image.revision")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tag == "" {
		return errors.New("-tag is required")
	}
	ref, err := name.NewTag(*repository + ":" + *tag)
	if err != nil {
		return fmt.Errorf("image reference: %w", err)
	}
	if fs.NArg() == 0 {
		return errors.New("no platforms given (linux/amd64 ...)")
	}
	created := time.Unix(*mtime, 0).UTC()
	labels := map[string]string{
		"org.opencontainers.image.title":    "ks-mc",
		"org.opencontainers.image.source":   "https://github.com/ks-mc/ks-mc",
		"org.opencontainers.image.version":  *tag,
		"org.opencontainers.image.revision": *revision,
		"org.opencontainers.image.licenses": "Apache-2.0",
	}

	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var tarImage v1.Image
	for _, s := range fs.Args() {
		osName, arch, ok := strings.Cut(s, "/")
		if !ok || osName != "linux" {
			return fmt.Errorf("platform %q: only linux/ARCH images are built", s)
		}
		bin, err := os.ReadFile(filepath.Join(*dir, "build", "linux_"+arch, Binary))
		if err != nil {
			return fmt.Errorf("read the linux/%s binary (build it first): %w", arch, err)
		}
		platform := v1.Platform{OS: "linux", Architecture: arch}
		if arch == "arm64" {
			platform.Variant = "v8"
		}
		img, err := Build(bin, platform, created, labels)
		if err != nil {
			return fmt.Errorf("image for %s: %w", s, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &platform}})
		if tarImage == nil || arch == "amd64" {
			tarImage = img
		}
	}
	idx = mutate.Annotations(idx, map[string]string{
		"org.opencontainers.image.version": *tag, "org.opencontainers.image.revision": *revision,
	}).(v1.ImageIndex)

	layoutDir := filepath.Join(*dir, "image")
	if err := os.RemoveAll(layoutDir); err != nil {
		return err
	}
	p, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{RefNameAnnotation: ref.String()})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	tarPath := filepath.Join(*dir, "image.tar")
	if err := tarball.WriteToFile(tarPath, ref, tarImage); err != nil {
		return fmt.Errorf("write %s: %w", tarPath, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s@%s\n  OCI layout: %s\n  tarball:    %s\n", ref, d, layoutDir, tarPath)
	return nil
}

// Build returns the image of one platform: base layer, binary layer, config.
func Build(bin []byte, platform v1.Platform, created time.Time, labels map[string]string) (v1.Image, error) {
	base, err := layer(created, baseFiles())
	if err != nil {
		return nil, err
	}
	binLayer, err := layer(created, []file{{name: Binary, mode: 0o755, data: bin}})
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "ks-mc base: /etc/passwd, /etc/group (nonroot 65532), /home/nonroot, /tmp", Comment: "hack/image"}},
		mutate.Addendum{Layer: binLayer, History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "COPY kubectl-ks_mc /kubectl-ks_mc", Comment: "hack/image"}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	cf.Created = v1.Time{Time: created}
	cf.Author = "ks-mc"
	cf.Config = v1.Config{
		Entrypoint: []string{"/" + Binary},
		User:       User,
		WorkingDir: "/home/nonroot",
		Env:        []string{"PATH=/", "HOME=/home/nonroot"},
		Labels:     labels,
	}
	return mutate.ConfigFile(img, cf)
}

type file struct {
	name     string
	mode     int64
	dir      bool
	uid, gid int
	data     []byte
}

func baseFiles() []file {
	return []file{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, dir: true, uid: 65532, gid: 65532},
		{name: "tmp/", mode: 0o1777, dir: true},
	}
}

// layer writes files (already in order) into an uncompressed tar with fixed metadata; the
// layer is gzip-compressed by go-containerregistry deterministically.
func layer(modTime time.Time, files []file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: modTime, Format: tar.FormatPAX}
		if f.dir {
			hdr.Typeflag = tar.TypeDir
		} else {
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}
