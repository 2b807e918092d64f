package cmd

// join --host-context H -f FILE: before the member's KubeSphere is installed, write the host's
// jwtSecret and clusterRole member into the file its installation starts from. Nothing is
// changed on the host. After the installation, a plain join finds these settings in place.

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ks-mc/ks-mc/pkg/installer"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// joinFile holds join's -f and --force.
type joinFile struct {
	fileTarget
	Force bool
}

const joinFileLong = `

Before the member's KubeSphere is installed, -f FILE writes the host's jwtSecret, clusterRole
member and accessTokenMaxAge 0 into the file the installation starts from (ks-installer's
cluster-configuration.yaml, or the ClusterConfiguration in KubeKey's config-sample.yaml), after
checking that the host is a host. Nothing is changed on the host; only the changed values of the
file are rewritten, and the file is left with mode 0600. After KubeSphere is installed from the
file, run join without -f to create the Cluster and the agent. With -f - the edited file, which
holds the jwtSecret, goes to stdout: redirect it to a file, never to a log.`

const joinFileExample = `

  # Before installing the member's KubeSphere (KubeKey or ks-installer file), then after it
  kubectl ks-mc join --host-context host -f config-sample.yaml
  kk create cluster -f config-sample.yaml
  kubectl ks-mc join --context member1 --host-context host`

func (o *JoinOptions) addFileFlags(cmd *cobra.Command) {
	o.fileTarget.addFlag(cmd)
	cmd.Flags().BoolVar(&o.Force, "force", false, "With -f: make a file that sets clusterRole host a member file")
	cmd.Long += joinFileLong
	cmd.Example += joinFileExample
}

// completeFile is join -f's Complete: no member cluster, the host as join selects it.
func (o *JoinOptions) completeFile(f *Factory, c *cobra.Command) error {
	o.fileTarget.complete(c)
	var err error
	if o.dryRun, err = parseDryRunFlag(o.DryRunFlag); err != nil {
		return err
	}
	if o.tunnel, err = kubesphere.ParseTunnel(o.Tunnel); err != nil {
		return usageErrorf("--tunnel: %v", err)
	}
	if err := resolveHostContext(f, &o.Host, &o.Interaction, ""); err != nil {
		return err
	}
	o.factory = f
	return nil
}

// validateFileFlags is join's Validate hook: --force only with -f; with -f, the flags that
// describe the member's Cluster and agent are refused.
func (o *JoinOptions) validateFileFlags() error {
	if o.File == "" {
		if o.Force {
			return usageErrorf("--force is only used with -f")
		}
		return nil
	}
	if err := o.refuse("name", "label", "description", "group", "region", "provider", "agent-image", "ca-cert-hash", "timeout"); err != nil {
		return err
	}
	return o.validateModes(o.dryRun, o.Output)
}

// placeholderSecret stands for the host's jwtSecret while the file is checked, before the host
// is contacted.
const placeholderSecret = "ksmcPlaceholderJwtSecret00000000"

// runFile performs join -f.
func (o *JoinOptions) runFile(parent context.Context) error {
	lf, err := o.load(o.In)
	if err != nil {
		return err
	}
	warnings, err := installer.CheckMemberFile(lf.parsed, o.Force)
	if err != nil {
		return fmt.Errorf("%s: %w (the file is unchanged)", lf.name, err)
	}
	// Can the file take the settings? Found out before the host is asked for its secret.
	if _, err := lf.parsed.Apply(installer.MemberFileEdits(lf.parsed, placeholderSecret)); err != nil {
		return fmt.Errorf("%s: %w (the file is unchanged)", lf.name, err)
	}
	for _, w := range warnings {
		fmt.Fprintln(o.ErrOut, "warning: "+w)
	}
	ctx, stop := interruptible(parent)
	defer stop()
	host, err := o.factory.HostClients(o.Host)
	if err != nil {
		return err
	}
	p, jwt := installer.HostSecret(ctx, host, installer.JoinOptions{Tunnel: o.tunnel})
	printChecks(o.ErrOut, p.Checks)
	if err := p.Err(); err != nil {
		return err
	}
	if jwt.IsZero() {
		return errors.New("the host's jwtSecret could not be read")
	}
	r := &fileRun{
		streams: ioStreams{out: o.Out, errOut: o.ErrOut, stdoutTTY: isTerminal(o.Out)},
		lf:      lf, edits: installer.MemberFileEdits(lf.parsed, jwt), dry: o.dryRun, output: o.Output, holdsJWT: true,
		res:        &installer.FileResult{Role: kubesphere.RoleMember, HostContext: host.Context},
		doneReason: "the host's jwtSecret, clusterRole member and accessTokenMaxAge 0 are set already",
	}
	if err := r.finish(); err != nil {
		if msg := manifests.Scrub(err.Error(), jwt.Reveal()); msg != err.Error() {
			return errors.New(msg)
		}
		return err
	}
	if !o.dryRun.Enabled() {
		fmt.Fprintf(o.ErrOut, "after KubeSphere is installed from %s, finish with:\n  %s join --context <member> %s\n", lf.name, CommandName, strings.TrimSpace(o.hostFlagsText()))
	}
	return nil
}

func (o *JoinOptions) hostFlagsText() string {
	s := ""
	if o.Host.Kubeconfig != "" {
		s += " --host-kubeconfig " + o.Host.Kubeconfig
	}
	if o.Host.Context != "" {
		s += " --host-context " + o.Host.Context
	}
	return s
}
