package cmd

import (
	"github.com/spf13/cobra"

	"github.com/ks-mc/ks-mc/pkg/installer"
)

// addDryRunFlag adds kubectl's --dry-run=none|client|server; a bare --dry-run means client.
func addDryRunFlag(cmd *cobra.Command, target *string) {
	cmd.Flags().StringVar(target, "dry-run", "none",
		`Must be "none", "client", or "server". If client, only print the changes that would be made, without sending them. If server, send them with dryRun=All (admission runs, nothing is persisted). A bare --dry-run means client.`)
	cmd.Flags().Lookup("dry-run").NoOptDefVal = "client"
}

// parseDryRunFlag validates the --dry-run value.
func parseDryRunFlag(v string) (installer.DryRun, error) {
	d, err := installer.ParseDryRun(v)
	if err != nil {
		return "", usageErrorf("--dry-run: %v", err)
	}
	return d, nil
}
