package installer

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// "kubectl ks-mc diagnose": read-only checks of a fleet (host, Clusters, members) that say why a
// member does not work, each with its evidence and the fix as data (which setting, which command).
// Data is gathered concurrently by a bounded pool of workers, every read with a timeout; the checks
// themselves are pure functions of what was gathered (diagnose_checks.go).

// DiagStatus is the outcome of one check.
type DiagStatus string

const (
	DiagOK   DiagStatus = "ok"
	DiagWarn DiagStatus = "warn"
	DiagFail DiagStatus = "fail"
	// DiagSkip: the check could not run (typically: no member context given); it never fails a run.
	DiagSkip DiagStatus = "skip"
)

// Fix is how to repair a finding, as data: the command layer renders it.
type Fix struct {
	// Action says what to do, in words.
	Action string `json:"action"`
	// Setting is the object and field to change, when the fix is an edit.
	Setting string `json:"setting,omitempty"`
	// KsMc is a ks-mc command line without "kubectl ks-mc" (["join", "--context", "m1", ...]).
	KsMc []string `json:"ksmc,omitempty"`
	// Kubectl is a kubectl command line without "kubectl".
	Kubectl []string `json:"kubectl,omitempty"`
	// See names another check whose fix comes first (the root cause).
	See string `json:"see,omitempty"`
}

// Finding is the result of one check.
type Finding = FindingOf[Fix]

// FindingOf is a finding with its fix as F: Fix here (data), a rendered fix in the command
// layer (pkg/cmd's CheckView), so the printed form is this same type.
type FindingOf[F any] struct {
	// ID names the check ("host.role", "cluster.tunnel", "member.jwtSecret").
	ID     string     `json:"id"`
	Status DiagStatus `json:"status"`
	// Subject is what was checked: "host", "cluster/NAME", "context/NAME".
	Subject string `json:"subject"`
	// Summary is the finding in one line.
	Summary string `json:"summary"`
	// Evidence lists what was observed (never a secret); printed as [] when empty.
	Evidence []string `json:"evidence"`
	// Sources names the evidence used by checks that combine several (cluster.tunnel).
	Sources []string `json:"sources,omitempty"`
	// LatencyMS is a measured round trip, when one was measured.
	LatencyMS *float64 `json:"latencyMs,omitempty"`
	// Fix is nil when there is nothing to fix (printed as null).
	Fix *F `json:"fix"`
}

// DiagnoseReport is every finding of one run.
type DiagnoseReport struct {
	Host string `json:"host"`
	// Contexts maps each member context to the Cluster it was matched to ("" when none).
	Contexts map[string]string `json:"contexts"`
	Findings []Finding         `json:"findings"`
	Summary  DiagnoseSummary   `json:"summary"`
	// Duration of the run in milliseconds (left out of golden files).
	DurationMS int64 `json:"durationMs,omitempty"`
}

// DiagnoseSummary counts findings per status.
type DiagnoseSummary struct {
	OK   int `json:"ok"`
	Warn int `json:"warn"`
	Fail int `json:"fail"`
	Skip int `json:"skip"`
}

// Failed reports whether any check failed, or (strict) warned.
func (r *DiagnoseReport) Failed(strict bool) bool {
	return r.Summary.Fail > 0 || (strict && r.Summary.Warn > 0)
}

// Find returns the findings of id for subject ("" = any subject).
func (r *DiagnoseReport) Find(id, subject string) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.ID == id && (subject == "" || f.Subject == subject) {
			out = append(out, f)
		}
	}
	return out
}

// DiagnoseOptions configure Diagnose.
type DiagnoseOptions struct {
	Host    *Clients
	Members []*Clients
	// Workers bounds the concurrent reads (default 8).
	Workers int
	// Timeout bounds every single read or probe (default 5s).
	Timeout time.Duration
	// Clock measures an apiserver's clock offset (default APIServerClock).
	Clock ServerClock
	// ProxyHealth probes the published proxy address from this machine (default CheckProxyHealth).
	ProxyHealth func(ctx context.Context, address string, timeout time.Duration) error
	// ServiceProxy asks the host apiserver to proxy GET /version to mc-NAME (default: the
	// Services proxy subresource); nil result error = an answer came back through the tunnel.
	ServiceProxy func(ctx context.Context, host *Clients, cluster string) error
	// TunnelOnly skips the probes only the host checks need (status --probe).
	TunnelOnly bool
	// Bundle collects the objects and logs behind the checks (redacted) for a support bundle.
	Bundle bool
	// LogLines is how many recent log lines of agent/tower pods are read (default 30).
	LogLines int64
	// Now is the clock (tests).
	Now func() time.Time
}

// hostData is what was read on the host.
type hostData struct {
	c            *Clients
	cc           *ClusterConfiguration
	ccErr        error
	cfg          *KubeSphereConfig
	cfgErr       error
	installer    InstallerState
	installerErr error
	restart      bool
	restartWhy   string
	restartErr   error
	tower        *appsv1.Deployment
	towerErr     error
	svc          *corev1.Service
	svcErr       error
	nodes        []corev1.Node
	nodesErr     error
	clusters     []unstructured.Unstructured
	clustersErr  error
	leases       map[string]*coordinationv1.Lease
	leasesErr    error
	uid          string
	clock        time.Duration
	clockErr     error
	health       error
	healthRTT    time.Duration
	healthAddr   string
	addrFromLB   bool
	svcProxy     map[string]probeResult
}

type probeResult struct {
	err error
	rtt time.Duration
}

// memberData is what was read through one member context.
type memberData struct {
	c          *Clients
	cc         *ClusterConfiguration
	ccErr      error
	cfg        *KubeSphereConfig
	cfgErr     error
	installer  InstallerState
	uid        string
	uidErr     error
	clock      time.Duration
	clockErr   error
	agent      *appsv1.Deployment
	agentErr   error
	agentToken Secret
	tokenErr   error
	pods       []corev1.Pod
	podsErr    error
	logs       map[string]string
	// cluster is the Cluster this context was matched to, matchedBy how.
	cluster   string
	matchedBy string
}

// Diagnose runs every check. It returns an error only when nothing can be checked (no host).
// Gathering (diagnose_gather.go) runs in two rounds on a bounded pool; the checks
// (diagnose_checks.go, diagnose_member.go) are pure functions of what was gathered.
func Diagnose(ctx context.Context, o DiagnoseOptions) (*DiagnoseReport, *Bundle, error) {
	if o.Host == nil {
		return nil, nil, errors.New("diagnose: a host is required")
	}
	o.defaults()
	start := o.Now()
	var bundle *Bundle
	if o.Bundle {
		bundle = newBundle()
	}
	h := &hostData{c: o.Host, svcProxy: map[string]probeResult{}}
	members := make([]*memberData, 0, len(o.Members))
	for _, m := range o.Members {
		if m != nil {
			members = append(members, &memberData{c: m, logs: map[string]string{}})
		}
	}
	p := newPool(o.Workers, o.Timeout)
	gatherHost(ctx, p, h, o, bundle)
	for _, m := range members {
		gatherMember(ctx, p, m, o, bundle)
	}
	p.wait()
	probeHost(ctx, h, o)
	matchMembers(h, members)

	rep := &DiagnoseReport{Host: o.Host.Context, Contexts: map[string]string{}}
	for _, m := range members {
		rep.Contexts[m.c.Context] = m.cluster
	}
	rep.Findings = runChecks(h, members, o.Now())
	// Evidence quotes other programs' words (installer lines, API errors): scrub every secret seen.
	secrets := collectSecrets(h, members)
	rep.scrub(secrets)
	rep.count()
	rep.DurationMS = o.Now().Sub(start).Milliseconds()
	if bundle != nil {
		bundle.secrets = secrets
	}
	return rep, bundle, nil
}

func (o *DiagnoseOptions) defaults() {
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Clock == nil {
		o.Clock = APIServerClock
	}
	if o.ProxyHealth == nil {
		o.ProxyHealth = CheckProxyHealth
	}
	if o.ServiceProxy == nil {
		o.ServiceProxy = serviceProxyVersion
	}
	if o.LogLines <= 0 {
		o.LogLines = 30
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// scrub removes every secret from the findings' words.
func (r *DiagnoseReport) scrub(secrets []string) {
	for i := range r.Findings {
		f := &r.Findings[i]
		f.Summary = manifests.Scrub(f.Summary, secrets...)
		for j := range f.Evidence {
			f.Evidence[j] = manifests.Scrub(f.Evidence[j], secrets...)
		}
	}
}

// count fills the summary.
func (r *DiagnoseReport) count() {
	for _, f := range r.Findings {
		switch f.Status {
		case DiagOK:
			r.Summary.OK++
		case DiagWarn:
			r.Summary.Warn++
		case DiagFail:
			r.Summary.Fail++
		case DiagSkip:
			r.Summary.Skip++
		}
	}
}

// digestEqual compares two secrets by their SHA-256 digests (neither is ever printed).
func digestEqual(a, b Secret) bool {
	da, db := sha256.Sum256([]byte(a.Reveal())), sha256.Sum256([]byte(b.Reveal()))
	return subtle.ConstantTimeCompare(da[:], db[:]) == 1
}

func sortFindings(fs []Finding) {
	rank := func(s string) int {
		switch {
		case s == "host":
			return 0
		case strings.HasPrefix(s, "cluster/"):
			return 1
		}
		return 2
	}
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if rank(a.Subject) != rank(b.Subject) {
			return rank(a.Subject) < rank(b.Subject)
		}
		return a.Subject < b.Subject
	})
}

func ms(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1000
	return &v
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return apiReason(err)
}

func fmtAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String()
}

var _ = fmt.Sprintf
