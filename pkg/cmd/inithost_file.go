package cmd

// init-host -f FILE and the file handling shared with join -f: set the roles in the file a
// KubeSphere installation starts from, before it is installed. The editing itself is in
// pkg/installer/cfgfile (surgical: every byte outside the changed values is kept).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/installer/cfgfile"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// fileTarget is the -f flag of init-host and join.
type fileTarget struct {
	File string
	// changed lists the flags given on the command line (flags that need a cluster are refused
	// with -f).
	changed map[string]bool
}

const fileFlagUsage = "Edit this cluster-configuration.yaml (ks-installer) or config-sample.yaml (KubeKey) before KubeSphere is installed, instead of a cluster; \"-\" reads stdin and writes the edited file to stdout"

func (t *fileTarget) addFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&t.File, "filename", "f", "", fileFlagUsage)
	_ = cmd.MarkFlagFilename("filename", "yaml", "yml", "json")
}

func (t *fileTarget) complete(c *cobra.Command) {
	t.changed = map[string]bool{}
	if c == nil {
		return
	}
	c.Flags().Visit(func(fl *pflag.Flag) { t.changed[fl.Name] = true })
}

// refuse returns a usage error when one of the flags was given with -f.
func (t *fileTarget) refuse(flags ...string) error {
	for _, n := range flags {
		if t.changed[n] {
			return usageErrorf("--%s is not used with -f (no cluster is contacted)", n)
		}
	}
	return nil
}

func (t *fileTarget) stdio() bool { return t.File == "-" }

// validateFileModes checks --dry-run and -o for a file edit.
func (t *fileTarget) validateModes(dry installer.DryRun, output string) error {
	if dry == installer.DryRunServer {
		return usageErrorf("--dry-run=server needs a cluster: with -f use --dry-run (client)")
	}
	if err := validateOutputFormat(output, true); err != nil {
		return err
	}
	if t.stdio() && output != "" && !dry.Enabled() {
		return usageErrorf("-o is not used with -f -: stdout is the edited file")
	}
	return nil
}

// loadedFile is a parsed file and what is known about it before the edit.
type loadedFile struct {
	path   string
	name   string // for messages and the diff header
	data   []byte
	mode   fs.FileMode
	parsed *cfgfile.File
}

// load reads and parses the file (or stdin) and, for a real file, checks it can be replaced.
// Nothing is written.
func (t *fileTarget) load(in io.Reader) (*loadedFile, error) {
	lf := &loadedFile{path: t.File, name: t.File}
	var err error
	if t.stdio() {
		lf.name = "<stdin>"
		lf.data, err = io.ReadAll(io.LimitReader(in, cfgfile.MaxSize+1))
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
	} else {
		if lf.mode, err = cfgfile.CheckWritable(t.File); err != nil {
			return nil, err
		}
		if lf.data, err = os.ReadFile(t.File); err != nil {
			return nil, fmt.Errorf("read %s: %w", t.File, err)
		}
	}
	if lf.parsed, err = cfgfile.Parse(lf.data); err != nil {
		return nil, fmt.Errorf("%s: %w (the file is unchanged)", lf.name, err)
	}
	return lf, nil
}

// fileRun is one file edit to finish: print, write, report.
type fileRun struct {
	streams    ioStreams
	lf         *loadedFile
	edits      []cfgfile.Edit
	dry        installer.DryRun
	output     string
	holdsJWT   bool // the result holds the jwtSecret: mode 0600
	res        *installer.FileResult
	doneReason string // what "nothing to change" means, for stderr
}

type ioStreams struct {
	out, errOut io.Writer
	stdoutTTY   bool
}

func (r *fileRun) finish() error {
	lf, res := r.lf, r.res
	res.File, res.Kind, res.KubeSphereVersion = lf.name, lf.parsed.Kind, lf.parsed.Version
	res.DryRun = ""
	if r.dry.Enabled() {
		res.DryRun = r.dry
	}
	res.Changes = installer.FileChanges(lf.parsed, r.edits)
	res.Changed = len(r.edits) > 0
	out := lf.data
	if len(r.edits) > 0 {
		var err error
		if out, err = lf.parsed.Apply(r.edits); err != nil {
			return fmt.Errorf("%s: %w (the file is unchanged)", lf.name, err)
		}
	}
	mode := lf.mode
	if !lf.parsedStdio() && r.holdsJWT && mode&0o077 != 0 {
		mode = 0o600
	}
	if !lf.parsedStdio() {
		res.Mode = fmt.Sprintf("%04o", mode)
	}
	if r.dry.Enabled() {
		fmt.Fprintf(r.streams.errOut, "dry run (%s): %s was not changed\n", r.dry, lf.name)
		if mode != lf.mode {
			fmt.Fprintf(r.streams.errOut, "would change the mode of %s from %04o to 0600 (it holds the jwtSecret)\n", lf.name, lf.mode)
		}
		if len(r.edits) == 0 {
			fmt.Fprintf(r.streams.errOut, "no changes: %s\n", r.doneReason)
		}
		if r.output != "" {
			return printObject(r.streams.out, r.output, res)
		}
		before, after, err := lf.parsed.Redacted(r.edits, installer.FileSecretPaths...)
		if err != nil {
			return fmt.Errorf("%s: %w", lf.name, err)
		}
		_, err = io.WriteString(r.streams.out, cfgfile.UnifiedDiff(lf.name, before, after))
		return err
	}
	if lf.parsedStdio() {
		if r.holdsJWT && r.streams.stdoutTTY {
			return errors.New("refusing to write the edited file, which holds the jwtSecret, to a terminal: redirect stdout to a file")
		}
		if len(r.edits) == 0 {
			fmt.Fprintf(r.streams.errOut, "no changes: %s\n", r.doneReason)
		} else {
			fmt.Fprintf(r.streams.errOut, "%s: %s\n", lf.name, installer.DescribeFileEdits(r.edits))
		}
		_, err := r.streams.out.Write(out)
		return err
	}
	switch {
	case len(r.edits) == 0:
		fmt.Fprintf(r.streams.errOut, "no changes: %s; %s left untouched\n", r.doneReason, lf.name)
		if mode != lf.mode {
			if err := os.Chmod(lf.path, mode); err != nil {
				return fmt.Errorf("chmod %s: %w", lf.path, err)
			}
		}
	default:
		if err := cfgfile.WriteFile(lf.path, out, mode); err != nil {
			return fmt.Errorf("%w (the original file is unchanged)", err)
		}
		fmt.Fprintf(r.streams.errOut, "%s: %s\n", lf.name, installer.DescribeFileEdits(r.edits))
	}
	if mode != lf.mode {
		fmt.Fprintf(r.streams.errOut, "%s was mode %04o: it is 0600 now, as it holds the jwtSecret\n", lf.name, lf.mode)
	}
	if r.output != "" {
		return printObject(r.streams.out, r.output, res)
	}
	return nil
}

func (lf *loadedFile) parsedStdio() bool { return lf.path == "-" }

const initHostFileLong = `

Before KubeSphere is installed, -f FILE sets the same in the file the installation starts from
(ks-installer's cluster-configuration.yaml, or KubeSphere's ClusterConfiguration document in
KubeKey's config-sample.yaml): clusterRole host, and proxyPublishAddress when
--proxy-publish-address is given. No cluster is contacted. Only the changed values are
rewritten: comments, order, indentation, quoting, line endings and the other documents are kept.`

const initHostFileExample = `

  # Before installing KubeSphere: make cluster-configuration.yaml (or KubeKey's config-sample.yaml)
  # install a host; --dry-run shows the change as a diff
  kubectl ks-mc init-host -f cluster-configuration.yaml --proxy-publish-address http://203.0.113.10:30881
  kubectl ks-mc init-host -f config-sample.yaml --dry-run`

// addInitHostFileFlags is init-host's hook for -f.
func (o *InitHostOptions) addFileFlags(cmd *cobra.Command) {
	o.fileTarget.addFlag(cmd)
	cmd.Long += initHostFileLong
	cmd.Example += initHostFileExample
}

// validateFile checks init-host -f's flags: the address as init-host validates it.
func (o *InitHostOptions) validateFile() error {
	if err := o.refuse("tunnel", "proxy-image", "allow-plaintext-agents", "no-restart", "timeout", "load-balancer-wait"); err != nil {
		return err
	}
	if err := o.validateModes(o.dryRun, o.Output); err != nil {
		return err
	}
	return o.validateAddress()
}

// runFile performs init-host -f.
func (o *InitHostOptions) runFile(_ context.Context) error {
	lf, err := o.load(o.In)
	if err != nil {
		return err
	}
	warnings, err := installer.CheckHostFile(lf.parsed, o.Force)
	if err != nil {
		return fmt.Errorf("%s: %w (the file is unchanged)", lf.name, err)
	}
	for _, w := range warnings {
		fmt.Fprintln(o.ErrOut, "warning: "+w)
	}
	addr := o.ProxyPublishAddress // validated and normalised by validateFile
	reason := "clusterRole is host already"
	if addr != "" {
		reason = "clusterRole host and proxyPublishAddress are set already"
	}
	r := &fileRun{
		streams: ioStreams{out: o.Out, errOut: o.ErrOut, stdoutTTY: isTerminal(o.Out)},
		lf:      lf, edits: installer.HostFileEdits(lf.parsed, addr), dry: o.dryRun, output: o.Output,
		res: &installer.FileResult{Role: kubesphere.RoleHost}, doneReason: reason,
	}
	return r.finish()
}
