//go:build release

// Package release checks what `make dist`, `make krew-manifest` and `make image` produce:
// archive contents, the rendered krew manifest against .krew.yaml, a real krew install through
// kubectl's plugin discovery, and the OCI image. Run with `make release-test` (part of
// `make test`), which builds everything at RELEASE_TEST_VERSION and sets the variables below.
package release

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	distDir        string // KSMC_DIST_DIR: archives, checksums.txt, plugins.yaml, build/, image/
	version        string // KSMC_VERSION: the version everything was built with
	imageRepo      string // KSMC_IMAGE_REPOSITORY
	krewBin        string // KREW_BIN: krew built from sigs.k8s.io/krew
	validateBin    string // VALIDATE_KREW_MANIFEST_BIN
	repoRoot       = filepath.Join("..", "..")
	renderedKrew   string // distDir/plugins.yaml
	releasePlatfms = []string{"darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64", "windows/amd64"}
)

func TestMain(m *testing.M) {
	missing := false
	for _, v := range []struct {
		env string
		dst *string
	}{
		{"KSMC_DIST_DIR", &distDir}, {"KSMC_VERSION", &version}, {"KSMC_IMAGE_REPOSITORY", &imageRepo},
		{"KREW_BIN", &krewBin}, {"VALIDATE_KREW_MANIFEST_BIN", &validateBin},
	} {
		*v.dst = os.Getenv(v.env)
		if *v.dst == "" {
			fmt.Fprintf(os.Stderr, "%s is not set: run these tests with `make release-test`\n", v.env)
			missing = true
		}
	}
	if missing {
		os.Exit(2)
	}
	renderedKrew = filepath.Join(distDir, "plugins.yaml")
	os.Exit(m.Run())
}

// archiveName mirrors hack/dist.ArchiveName (the names .krew.yaml refers to).
func archiveName(platform string) string {
	os, arch := splitPlatform(platform)
	ext := ".tar.gz"
	if os == "windows" {
		ext = ".zip"
	}
	return fmt.Sprintf("kubectl-ks_mc_%s_%s_%s%s", version, os, arch, ext)
}

func splitPlatform(p string) (string, string) {
	os, arch, _ := strings.Cut(p, "/")
	return os, arch
}
