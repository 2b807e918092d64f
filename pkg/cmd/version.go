package cmd

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ks-mc/ks-mc/pkg/version"
)

// VersionOptions holds the flags of "kubectl ks-mc version".
type VersionOptions struct {
	Output string
	genericiooptions.IOStreams
}

// NewVersionOptions returns VersionOptions with defaults.
func NewVersionOptions(streams genericiooptions.IOStreams) *VersionOptions {
	return &VersionOptions{IOStreams: streams}
}

// NewCmdVersion prints the version of this build.
func NewCmdVersion(streams genericiooptions.IOStreams) *cobra.Command {
	o := NewVersionOptions(streams)
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the ks-mc version",
		Example: "  kubectl ks-mc version\n  kubectl ks-mc version -o json",
		Args:    cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run()
		},
	}
	cmd.Flags().StringVarP(&o.Output, "output", "o", "", "Output format. One of: (json, yaml).")
	return cmd
}

// Validate checks the flags.
func (o *VersionOptions) Validate() error {
	return validateOutputFormat(o.Output, true)
}

// Run prints the version.
func (o *VersionOptions) Run() error {
	info := version.Get()
	if o.Output == "" {
		_, err := fmt.Fprintf(o.Out, "ks-mc %s (commit %s, built %s, %s, %s)\n", info.Version, info.GitCommit, info.BuildDate, info.GoVersion, info.Platform)
		return err
	}
	return printObject(o.Out, o.Output, info)
}
