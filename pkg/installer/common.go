// Package installer holds the KubeSphere logic of ks-mc: preflight checks, ClusterConfiguration
// patches, waiting for ks-installer, the host set-up (init-host) and the member join.
//
// The package never prompts and never writes to stdout: progress goes through a Reporter, and
// anything that needs an answer from the user is a callback supplied by the command.
//
// Common helpers (shared by init-host and join; owned by the init-host files common*.go and
// kubesphere*.go):
//
//   - Clients / NewClients, Reporter (Step, Progress, Warn) / NopReporter, DryRun / ParseDryRun,
//     (the field manager and every KubeSphere name are in pkg/kubesphere).
//   - Preflight (OK, Warn, Error, Merge, Err → *PreflightError) and Check ("[ok] …" lines).
//   - CheckAccess / CheckAccessInto with Access: RBAC through SelfSubjectAccessReview.
//   - GetClusterConfiguration (wraps ErrKubeSphereNotInstalled) → *ClusterConfiguration with
//     ClusterRole, ProxyPublishAddress, JWTSecret, Version, ComponentStatus, String(path...).
//   - MergePatch (Set, SetIfDifferent, Get, JSON, Redacted) and PatchClusterConfiguration: JSON
//     merge patches that leave every other field of the object untouched; DryRunClient sends nothing,
//     DryRunServer sends dryRun=All.
//   - Secret: a string that prints, JSON- and YAML-encodes as "<redacted>"; Reveal() to use it.
//   - GetKubeSphereConfig / ParseKubeSphereConfig → *KubeSphereConfig (jwtSecret as Secret,
//     MaximumClockSkewDuration, AccessTokenMaxAgeDuration, multicluster settings).
//   - ConfigDrift: what of the CC spec kubesphere-config does not show yet (installer mid-run).
//   - GetInstallerState / ParseInstallerLog / InstallerLogsCommand; WaitForInstaller with
//     WaitOptions{What, Timeout, Deadline, Since, Interval, Done}: progress through the Reporter,
//     *InstallerFailedError or *InstallerTimeoutError naming the exact "kubectl logs" command.
//   - RestartDeployment / RestartPatch (kubectl.kubernetes.io/restartedAt), WaitForRollout(Until),
//     DeploymentRolledOut, NeedsAPIServerRestart / LastUpdateBy (managedFields of manager ks-mc).
//   - HostReady, HostTunnel / TunnelOf: what a host runs, for join's preflight and --tunnel=auto.
package installer

import (
	"fmt"
	"strings"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Clients are the API clients of one cluster.
type Clients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	// Config is the REST config the clients were built from (nil in unit tests).
	Config *rest.Config
	// Context is the kubeconfig context name, used in advice ("--context X"); may be empty.
	Context string
}

// NewClients builds the clientsets from a REST config.
func NewClients(cfg *rest.Config, context string) (*Clients, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create dynamic client: %w", err)
	}
	return &Clients{Kube: kube, Dynamic: dyn, Config: cfg, Context: context}, nil
}

// contextFlag renders " --context X" for advice, or "" when the context is unknown.
func (c *Clients) contextFlag() string {
	if c == nil || c.Context == "" {
		return ""
	}
	return " --context " + c.Context
}

// Reporter receives progress from long operations. Implementations decide how to show it
// (spinner on a terminal, plain lines otherwise). All methods must be safe to call often.
type Reporter interface {
	// Step announces an action or a finished step ("set clusterRole: host").
	Step(msg string)
	// Progress updates the status of an ongoing wait ("waiting for ks-installer: multicluster pending").
	// Consecutive Progress calls with the same text may be collapsed.
	Progress(msg string)
	// Warn reports something the user should know but that does not stop the operation.
	Warn(msg string)
}

// NopReporter discards everything.
type NopReporter struct{}

func (NopReporter) Step(string)     {}
func (NopReporter) Progress(string) {}
func (NopReporter) Warn(string)     {}

func reporterOrNop(r Reporter) Reporter {
	if r == nil {
		return NopReporter{}
	}
	return r
}

// DryRun follows kubectl: none changes the cluster, client computes the changes without sending
// them, server sends them with dryRun=All so admission runs but nothing is persisted.
type DryRun string

const (
	DryRunNone   DryRun = "none"
	DryRunClient DryRun = "client"
	DryRunServer DryRun = "server"
)

// ParseDryRun accepts none, client, server, and "" (= none). The command maps a bare --dry-run
// to client before calling it.
func ParseDryRun(s string) (DryRun, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "none", "false":
		return DryRunNone, nil
	case "client", "true":
		return DryRunClient, nil
	case "server":
		return DryRunServer, nil
	}
	return "", fmt.Errorf("invalid dry-run value %q: use none, client or server", s)
}

// Enabled reports whether nothing may be persisted.
func (d DryRun) Enabled() bool { return d == DryRunClient || d == DryRunServer }

// apiDryRun is the DryRun field of metav1 write options.
func (d DryRun) apiDryRun() []string {
	if d == DryRunServer {
		return []string{"All"}
	}
	return nil
}
