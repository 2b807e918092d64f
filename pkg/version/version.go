// Package version holds the build-time version of ks-mc.
//
// The variables are stamped with -ldflags "-X github.com/ks-mc/ks-mc/pkg/version.Version=v1.2.3 ...".
package version

import "runtime"

var (
	// Version is the semantic version of this build ("v0.0.0-dev" when unstamped).
	Version = "v0.0.0-dev"
	// GitCommit is the commit the binary was built from.
	GitCommit = "unknown"
	// BuildDate is the commit date (RFC 3339), not the wall-clock build time, so builds are reproducible.
	BuildDate = "unknown"
	// ImageRepository is the repository of the container image that runs the agent and proxy modes.
	ImageRepository = "ghcr.io/ks-mc/ks-mc"
)

// Info is the machine-readable version report.
type Info struct {
	Version   string `json:"version"`
	GitCommit string `json:"gitCommit"`
	BuildDate string `json:"buildDate"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
	Image     string `json:"image"`
}

// Get returns the version of this build.
func Get() Info {
	return Info{
		Version:   Version,
		GitCommit: GitCommit,
		BuildDate: BuildDate,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
		Image:     Image(),
	}
}

// Image is the default container image reference of this build's agent and proxy.
func Image() string {
	return ImageRepository + ":" + Version
}
