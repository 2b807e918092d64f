// Package cmd holds the cobra commands of kubectl ks-mc: flags, prompts and printing.
// KubeSphere logic lives in pkg/installer and the tunnel runtime in pkg/tunnel.
package cmd

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"

	// Exec, OIDC and other auth plugins referenced by kubeconfigs.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

// CommandName is how users invoke the plugin.
const CommandName = "kubectl ks-mc"

// Execute runs the root command with the process's streams and returns the exit code.
func Execute() int {
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	root := NewCmdRoot(streams)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(streams.ErrOut, "error:", err)
		var exit *ExitError
		if errors.As(err, &exit) {
			return exit.Code
		}
		return 1
	}
	return 0
}

// ExitError carries a specific exit code out of a command.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// NewCmdRoot builds the root command and all subcommands.
func NewCmdRoot(streams genericiooptions.IOStreams) *cobra.Command {
	configFlags := genericclioptions.NewConfigFlags(true)
	cmd := &cobra.Command{
		Use:   "ks-mc",
		Short: "Set up KubeSphere multi-cluster (agent connection) in one command per cluster",
		Long: `ks-mc turns KubeSphere 3.x multi-cluster set-up in agent connection mode into
one scriptable, re-runnable command per cluster:

  kubectl ks-mc init-host --context host            make a cluster the host
  kubectl ks-mc join --context member1 --host-context host
                                                     join a member through the agent tunnel
  kubectl ks-mc status --host-context host          show the fleet

The same binary also runs the reverse tunnel (proxy mode in the host, agent mode in
a member).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Flags are parsed by cobra; unknown subcommands produce a usage error.
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
		// Every command talks to clusters whose objects hold secrets: keep -v below client-go's
		// body-logging levels.
		// --vmodule raises the level per file, so it is capped the same way.
		PersistentPreRun: func(c *cobra.Command, _ []string) {
			capVerbosity(streams.ErrOut)
			capVModule(c.Flags().Lookup("vmodule"), streams.ErrOut)
		},
		CompletionOptions: cobra.CompletionOptions{
			HiddenDefaultCmd: false,
		},
	}
	cmd.SetIn(streams.In)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	// kubectl maps "kubectl ks-mc" to this binary; make help and usage read that way.
	cmd.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: CommandName}

	flags := cmd.PersistentFlags()
	configFlags.AddFlags(flags)
	addKlogFlags(flags)

	f := &Factory{ConfigFlags: configFlags, Streams: streams}
	cmd.AddCommand(NewCmdVersion(streams))
	for _, add := range subcommands {
		cmd.AddCommand(add(f))
	}
	// Context and cluster-name suggestions for <TAB> (pkg/cmd/completion.go).
	registerCompletions(cmd)
	return cmd
}

// subcommands are registered by the files that define them (init functions), so that
// independent commands do not edit one list.
var subcommands []func(*Factory) *cobra.Command

func registerCommand(add func(*Factory) *cobra.Command) { subcommands = append(subcommands, add) }

// addKlogFlags exposes klog's -v (and --vmodule) the way kubectl does; -v controls log verbosity only.
func addKlogFlags(flags *pflag.FlagSet) {
	gofs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gofs)
	gofs.VisitAll(func(f *flag.Flag) {
		switch f.Name {
		case "v", "vmodule":
			pf := pflag.PFlagFromGoFlag(f)
			if f.Name == "v" {
				pf.Shorthand = "v"
			}
			flags.AddFlag(pf)
		}
	})
	// Logs go to stderr, never into stdout results.
	_ = gofs.Set("logtostderr", "true")
}

// usageErrorf reports a wrong invocation.
func usageErrorf(format string, args ...any) error {
	return fmt.Errorf(format+"\nSee '%s --help'.", append(args, CommandName)...)
}

// capVModule lowers every --vmodule level above maxSafeVerbosity to it ("*=10" would otherwise
// turn on client-go's body logging for every file, past the -v cap).
func capVModule(f *pflag.Flag, errOut io.Writer) {
	if f == nil || f.Value.String() == "" {
		return
	}
	parts := strings.Split(f.Value.String(), ",")
	capped := false
	for i, p := range parts {
		pat, lvl, ok := strings.Cut(p, "=")
		if n, err := strconv.Atoi(lvl); ok && err == nil && n > maxSafeVerbosity {
			parts[i] = pat + "=" + strconv.Itoa(maxSafeVerbosity)
			capped = true
		}
	}
	if !capped {
		return
	}
	if err := f.Value.Set(strings.Join(parts, ",")); err != nil {
		// Never leave a level above the cap in place.
		_ = f.Value.Set("")
	}
	fmt.Fprintf(errOut, "warning: --vmodule levels capped at %d: higher levels make client-go log request bodies, which hold secrets here\n", maxSafeVerbosity)
}
