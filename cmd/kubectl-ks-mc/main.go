// Command kubectl-ks_mc is the ks-mc kubectl plugin ("kubectl ks-mc").
package main

import (
	"os"

	"github.com/ks-mc/ks-mc/pkg/cmd"
)

func main() {
	os.Exit(cmd.Execute())
}
