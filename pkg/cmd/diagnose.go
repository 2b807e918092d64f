package cmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/ks-mc/ks-mc/pkg/installer"
)

func init() { registerCommand(NewCmdDiagnose) }

const diagnoseExample = `  # Host-side checks only (member-side checks say which context enables them)
  kubectl ks-mc diagnose --host-context host

  # Host and two members, as JSON for CI (exit code 1 when a check fails)
  kubectl ks-mc diagnose --host-context host --context member1 --context member2 -o json

  # Every context of the kubeconfig, warnings fail too, and a redacted support bundle
  kubectl ks-mc diagnose --host-context host --all-contexts --strict --bundle ks-mc-diagnose.tar.gz

  # One member only
  kubectl ks-mc diagnose --host-context host --context member1 --name member1`

// DiagnoseOptions holds the flags of "kubectl ks-mc diagnose".
type DiagnoseOptions struct {
	Host        hostFlags
	Contexts    []string
	AllContexts bool
	Output      string
	Bundle      string
	Strict      bool
	Name        string
	Timeout     time.Duration
	Workers     int

	genericiooptions.IOStreams

	// factory builds the clients (set by Complete; tests swap Factory.Clients).
	factory *Factory
	// Diagnose runs the checks (replaced in tests).
	Diagnose func(ctx context.Context, o installer.DiagnoseOptions) (*installer.DiagnoseReport, *installer.Bundle, error)
	Now      func() time.Time
}

// NewDiagnoseOptions returns DiagnoseOptions with defaults.
func NewDiagnoseOptions(streams genericiooptions.IOStreams) *DiagnoseOptions {
	return &DiagnoseOptions{IOStreams: streams, Timeout: 5 * time.Second, Workers: 8, Diagnose: installer.Diagnose, Now: time.Now}
}

// NewCmdDiagnose says why a member is not working.
func NewCmdDiagnose(f *Factory) *cobra.Command {
	o := NewDiagnoseOptions(f.Streams)
	cmd := &cobra.Command{
		Use:   "diagnose --host-context HOST [--context MEMBER ...|--all-contexts] [-o json|yaml] [--bundle FILE] [--strict]",
		Short: "Check a multi-cluster fleet and say why a member is not working",
		Long: `Run read-only checks on the host, on every Cluster of the host and, through the given member
contexts, on the members, and print each as ok, warn, fail or skip with its evidence and the command
or edit that fixes it. Works on fleets that ks-mc did not set up (console, manual agent.yaml, Tower).

Member contexts are matched to Clusters by kube-system UID, as join does. Without member contexts the
host-side checks still run and the member-side ones say which context would enable them.

Host: clusterRole host, multicluster enabled, ks-installer not failed, tower Deployment ready, tower
Service address, proxyPublishAddress consistent with the Service's ports, ks-apiserver restarted after
the settings changed, the proxy's /health answering from this machine.
Cluster: conditions; a live tunnel check that tells a live tunnel from a stale AgentAvailable/Ready
(evidence: the ks-mc proxy's heartbeat Lease, the member's agent pods, the host apiserver's service
proxy where it answers; the output names the evidence used), kubeconfig client-certificate expiry,
Terminating with a finalizer, duplicate kubernetesAPIServerPort, host >= member version.
Member: jwtSecret equal to the host's (digests only), accessTokenMaxAge 0, clusterRole member,
kubesphere-config rendered, clock skew vs maximumClockSkew, kube-system UID equal to the Cluster's,
agent Deployment with the Cluster's name, token and the host's address, agent pods and the cause
read from their logs.

Exit code: 0 when nothing fails, 1 when a check fails (warnings too with --strict).
--bundle writes a tar.gz for a support request: the objects and logs behind every check with every
secret redacted, and this report. Nothing secret is printed at any -v.`,
		Example: diagnoseExample,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			o.complete(f)
			return o.Run(c.Context())
		},
	}
	o.Host.add(cmd, true)
	fl := cmd.Flags()
	// A local --context (repeatable) shadows the global one: every value is a member context.
	fl.StringArrayVar(&o.Contexts, "context", nil, "Kubeconfig context of a member (repeatable)")
	fl.BoolVar(&o.AllContexts, "all-contexts", false, "Use every context of the kubeconfig except the host's as a member context")
	fl.StringVarP(&o.Output, "output", "o", "", "Output format: json or yaml")
	fl.StringVar(&o.Bundle, "bundle", "", "Write a redacted support bundle (tar.gz) to this file")
	fl.BoolVar(&o.Strict, "strict", false, "Exit 1 on warnings too")
	fl.StringVar(&o.Name, "name", "", "Report only this Cluster (and the host checks)")
	fl.DurationVar(&o.Timeout, "timeout", o.Timeout, "Timeout of every single read or probe")
	fl.IntVar(&o.Workers, "workers", o.Workers, "How many reads and probes run at once")
	_ = cmd.RegisterFlagCompletionFunc("context", func(c *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return completeContexts(c, "context", toComplete), cobra.ShellCompDirectiveNoFileComp
	})
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("bundle", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"tar.gz"}, cobra.ShellCompDirectiveFilterFileExt
	})
	return cmd
}

// Validate checks the flags.
func (o *DiagnoseOptions) Validate() error {
	if err := validateOutputFormat(o.Output, true); err != nil {
		return err
	}
	if o.AllContexts && len(o.Contexts) > 0 {
		return usageErrorf("--context and --all-contexts are exclusive")
	}
	if o.Timeout <= 0 {
		return usageErrorf("--timeout must be positive")
	}
	if o.Workers <= 0 {
		return usageErrorf("--workers must be positive")
	}
	if !o.Host.given() {
		return &MissingAnswerError{Flag: "--host-context", Example: "HOST_CONTEXT", Reason: "the host cluster is not selected"}
	}
	return nil
}

func (o *DiagnoseOptions) complete(f *Factory) { o.factory = f }

// Run diagnoses, prints the report and writes the bundle.
func (o *DiagnoseOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	host, err := o.factory.HostClients(o.Host)
	if err != nil {
		return err
	}
	members, err := o.factory.MemberClients(o.Host, host.Context, o.Contexts, o.AllContexts)
	if err != nil {
		return err
	}
	rep, bundle, err := o.Diagnose(ctx, installer.DiagnoseOptions{Host: host, Members: members, Workers: o.Workers, Timeout: o.Timeout, Bundle: o.Bundle != ""})
	if err != nil {
		return err
	}
	if o.Name != "" {
		rep = filterReport(rep, o.Name)
	}
	view := NewDiagnoseView(rep)
	if o.Output != "" {
		if err := printObject(o.Out, o.Output, view); err != nil {
			return err
		}
	} else {
		PrintDiagnose(o.Out, view)
	}
	if o.Bundle != "" && bundle != nil {
		if err := o.writeBundle(bundle, view); err != nil {
			return err
		}
		fmt.Fprintf(o.ErrOut, "support bundle written to %s (secrets redacted)\n", o.Bundle)
	}
	if rep.Failed(o.Strict) {
		what := fmt.Sprintf("%d check(s) failed", rep.Summary.Fail)
		if rep.Summary.Fail == 0 {
			what = fmt.Sprintf("%d warning(s) with --strict", rep.Summary.Warn)
		}
		return &ExitError{Code: 1, Err: fmt.Errorf("diagnose: %s", what)}
	}
	return nil
}

func (o *DiagnoseOptions) writeBundle(b *installer.Bundle, view *DiagnoseView) error {
	var js, txt bytes.Buffer
	if err := printObject(&js, "json", view); err != nil {
		return err
	}
	PrintDiagnose(&txt, view)
	b.Add("report.json", js.Bytes())
	b.Add("report.txt", txt.Bytes())
	f, err := os.OpenFile(o.Bundle, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write bundle %s: %w", o.Bundle, err)
	}
	if err := b.WriteTarGz(f, o.Now()); err != nil {
		f.Close()
		return fmt.Errorf("write bundle %s: %w", o.Bundle, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write bundle %s: %w", o.Bundle, err)
	}
	return nil
}

// DiagnoseView is the report as printed (-o json|yaml): every check with id, status, subject,
// evidence and fix (null when there is nothing to fix).
type DiagnoseView struct {
	Host     string                    `json:"host"`
	Contexts map[string]string         `json:"contexts"`
	Checks   []CheckView               `json:"checks"`
	Summary  installer.DiagnoseSummary `json:"summary"`
}

// CheckView is one check as printed: the finding with its fix rendered.
type CheckView = installer.FindingOf[FixView]

// FixView is a fix with its command rendered.
type FixView struct {
	Text    string `json:"text"`
	Setting string `json:"setting,omitempty"`
	Command string `json:"command,omitempty"`
	See     string `json:"see,omitempty"`
}

// NewDiagnoseView renders the fixes' commands.
func NewDiagnoseView(r *installer.DiagnoseReport) *DiagnoseView {
	v := &DiagnoseView{Host: r.Host, Contexts: r.Contexts, Summary: r.Summary, Checks: make([]CheckView, 0, len(r.Findings))}
	if v.Contexts == nil {
		v.Contexts = map[string]string{}
	}
	for _, f := range r.Findings {
		c := CheckView{ID: f.ID, Status: f.Status, Subject: f.Subject, Summary: f.Summary, Evidence: f.Evidence, Sources: f.Sources, LatencyMS: f.LatencyMS}
		if c.Evidence == nil {
			c.Evidence = []string{}
		}
		if f.Fix != nil {
			c.Fix = renderFix(f.Fix)
		}
		v.Checks = append(v.Checks, c)
	}
	return v
}

func renderFix(f *installer.Fix) *FixView {
	fv := &FixView{Setting: f.Setting, See: f.See}
	switch {
	case len(f.KsMc) > 0:
		fv.Command = CommandName + " " + shellJoin(f.KsMc)
	case len(f.Kubectl) > 0:
		fv.Command = "kubectl " + shellJoin(f.Kubectl)
	}
	fv.Text = f.Action
	if fv.Setting != "" {
		fv.Text += " (" + fv.Setting + ")"
	}
	if fv.Command != "" {
		fv.Text += ": " + fv.Command
	}
	return fv
}

func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$`\\|&;<>(){}*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// PrintDiagnose writes the human report: the checks grouped by subject, evidence and fix under
// every check that is not ok, and a summary line.
func PrintDiagnose(w io.Writer, v *DiagnoseView) {
	fmt.Fprintf(w, "Host %s\n", dash(v.Host))
	if len(v.Contexts) > 0 {
		names := make([]string, 0, len(v.Contexts))
		for n := range v.Contexts {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(w, "Context %s: Cluster %s\n", n, dash(v.Contexts[n]))
		}
	}
	subject := ""
	for _, c := range v.Checks {
		if c.Subject != subject {
			subject = c.Subject
			fmt.Fprintf(w, "\n%s\n", subject)
		}
		lat := ""
		if c.LatencyMS != nil {
			lat = fmt.Sprintf(" [%.1f ms]", *c.LatencyMS)
		}
		fmt.Fprintf(w, "  %-5s %s: %s%s\n", c.Status, c.ID, c.Summary, lat)
		if c.Status == installer.DiagOK {
			continue
		}
		if len(c.Sources) > 0 {
			fmt.Fprintf(w, "        evidence used: %s\n", strings.Join(c.Sources, ", "))
		}
		for _, e := range c.Evidence {
			fmt.Fprintf(w, "        - %s\n", e)
		}
		if c.Fix != nil {
			fmt.Fprintf(w, "        fix: %s\n", c.Fix.Text)
		}
	}
	s := v.Summary
	fmt.Fprintf(w, "\n%d checks: %d ok, %d warn, %d fail, %d skip\n", s.OK+s.Warn+s.Fail+s.Skip, s.OK, s.Warn, s.Fail, s.Skip)
}

// filterReport keeps the host's findings and those of Cluster name, and recounts.
func filterReport(r *installer.DiagnoseReport, name string) *installer.DiagnoseReport {
	out := *r
	out.Findings = nil
	out.Summary = installer.DiagnoseSummary{}
	for _, f := range r.Findings {
		if f.Subject != "host" && f.Subject != "cluster/"+name {
			continue
		}
		out.Findings = append(out.Findings, f)
		switch f.Status {
		case installer.DiagOK:
			out.Summary.OK++
		case installer.DiagWarn:
			out.Summary.Warn++
		case installer.DiagFail:
			out.Summary.Fail++
		case installer.DiagSkip:
			out.Summary.Skip++
		}
	}
	return &out
}
