package installer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// migrate moves members of a host that runs the ks-mc proxy from KubeSphere's Tower agent to the
// ks-mc agent, one member at a time, without a failed request: the ks-mc agent is rendered NEXT
// TO the Tower agent (Deployment kubesphere.MigratedAgentName), the proxy sends new requests to
// its session as soon as it is up (and lets those in flight on the Tower session finish), and
// only once the ks-mc session serves is the Cluster annotated (the proxy then never serves a
// Tower agent for it again) and the Tower agent removed. A member that fails is left on its
// working Tower agent.

// Results of one member.
const (
	MigrateMigrated        = "migrated"
	MigrateAlreadyMigrated = "already-migrated"
	MigrateWouldMigrate    = "would-migrate"
	MigrateFailed          = "failed"
	MigrateSkipped         = "skipped"
)

// MigrateOptions configure a migrate run.
type MigrateOptions struct {
	DryRun DryRun
	// Timeout bounds each member (rollout, session, annotation, removal). Default 5m.
	Timeout time.Duration
	// PollInterval between checks while waiting (default 2s).
	PollInterval time.Duration
	// AgentImage overrides the ks-mc agent image (default this build's).
	AgentImage string
	// CACertHash pins the proxy CA (default: read from the host's proxy CA Secret).
	CACertHash string
	// SkipUnmatched reports contexts that match no Cluster of the host as skipped instead of
	// failed (--all-contexts).
	SkipUnmatched bool
	// Probe sends one request through the per-cluster listener of cluster (default
	// ProbeClusterListener); unit tests replace it.
	Probe func(ctx context.Context, host *Clients, cluster string) error
	// OnPreflight receives each member's checks before any change (also when they fail).
	OnPreflight func(context string, p *Preflight)
}

// MigrateMemberResult is the outcome for one member context.
type MigrateMemberResult struct {
	Context string `json:"context"`
	// Name is the member's Cluster on the host ("" when none matched).
	Name   string `json:"name,omitempty"`
	Result string `json:"result"`
	// Protocol is the agent protocol the member uses at the end (tower or ks-mc).
	Protocol string `json:"protocol,omitempty"`
	// Reason says why the member failed or was skipped; Advice names the flag or command.
	Reason  string   `json:"reason,omitempty"`
	Advice  string   `json:"advice,omitempty"`
	Changed bool     `json:"changed"`
	Changes []Change `json:"changes"`
	// Evidence is what showed that the ks-mc session serves.
	Evidence []string `json:"evidence,omitempty"`
	// Pending lists what a dry run could not determine without applying.
	Pending []string `json:"pending,omitempty"`
	// Checks are the member's preflight checks.
	Checks []Check `json:"checks,omitempty"`
	// Elapsed is how long the member's migration (or its failure) took, rounded to 100ms; empty
	// for members that were skipped or already migrated.
	Elapsed string `json:"elapsed,omitempty"`
}

// MigrateSummary counts the members by result.
type MigrateSummary struct {
	Migrated        int `json:"migrated"`
	AlreadyMigrated int `json:"alreadyMigrated"`
	WouldMigrate    int `json:"wouldMigrate"`
	Failed          int `json:"failed"`
	Skipped         int `json:"skipped"`
}

// MigrateResult is the machine-readable outcome of migrate.
type MigrateResult struct {
	HostContext string                `json:"hostContext,omitempty"`
	DryRun      DryRun                `json:"dryRun,omitempty"`
	Changed     bool                  `json:"changed"`
	Members     []MigrateMemberResult `json:"members"`
	Summary     MigrateSummary        `json:"summary"`
}

// MigrateError says which members failed (each is left on its Tower agent).
type MigrateError struct {
	Failed []MigrateMemberResult
}

func (e *MigrateError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "migrate: %d member(s) failed and stay on their Tower agent", len(e.Failed))
	for _, m := range e.Failed {
		name := m.Name
		if name == "" {
			name = "context " + m.Context
		}
		fmt.Fprintf(&b, "\n  %s: %s", name, m.Reason)
		if m.Advice != "" {
			fmt.Fprintf(&b, "\n    fix: %s", m.Advice)
		}
	}
	return b.String()
}

// Migrate runs "kubectl ks-mc migrate".
type Migrate struct {
	host    *Clients
	members []*Clients
	opts    MigrateOptions
	rep     Reporter
	w       Writer
}

// MigratePlan is what Migrate's Preflight learned: the host's state, and each member's (members
// are checked again right before their turn, so a plan made earlier stays valid).
type MigratePlan struct {
	host *migrateHost
}

// NewMigrate prepares a migrate of the given member contexts.
func NewMigrate(host *Clients, members []*Clients, opts MigrateOptions, rep Reporter) *Migrate {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Minute
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 2 * time.Second
	}
	if opts.DryRun == "" {
		opts.DryRun = DryRunNone
	}
	if opts.Probe == nil {
		opts.Probe = ProbeClusterListener
	}
	return &Migrate{host: host, members: members, opts: opts, rep: reporterOrNop(rep), w: Writer{DryRun: opts.DryRun}}
}

// MigrateAccess is what migrate needs to be allowed to do on each side.
func MigrateAccess() (host, member []Access) {
	host = []Access{
		{Verb: "get", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "list", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "patch", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "get", Group: "coordination.k8s.io", Resource: "leases", Namespace: kubesphere.Namespace},
	}
	member = []Access{
		{Verb: "create", Group: "apps", Resource: "deployments", Namespace: kubesphere.Namespace},
		{Verb: "patch", Group: "apps", Resource: "deployments", Namespace: kubesphere.Namespace},
		{Verb: "delete", Group: "apps", Resource: "deployments", Namespace: kubesphere.Namespace},
		{Verb: "create", Resource: "secrets", Namespace: kubesphere.Namespace},
		{Verb: "patch", Resource: "secrets", Namespace: kubesphere.Namespace},
	}
	return host, member
}

// migrateHost is what the host preflight learned (shared by every member).
type migrateHost struct {
	uid          string
	proxyAddress string
	caHash       string
	agentImage   string
	towerAgents  string // the proxy's --tower-agents value ("auto" when not given)
	clusters     []unstructured.Unstructured
}

// migrateMember is what one member's preflight learned.
type migrateMember struct {
	c       *Clients
	res     *MigrateMemberResult
	uid     string
	cluster *unstructured.Unstructured
	token   string
	// tower is the member's Tower agent (cluster-agent); ksmc its ks-mc agent, if any.
	tower, ksmc *appsv1.Deployment
	annotated   bool // the Cluster says ks-mc.io/agent-protocol: ks-mc
	deployName  string
	deadline    time.Time
	// secretExisted: the token Secret was there before this run (a rollback keeps it).
	secretExisted bool
	log           *ChangeLog
}

// Run is Preflight then Apply. The error is a *MigrateError when a member failed, or the host
// preflight's error; the result is complete in both cases.
func (m *Migrate) Run(ctx context.Context) (*MigrateResult, error) {
	return m.Apply(ctx, m.Preflight(ctx))
}

// Preflight checks the host (it changes nothing): the ks-mc proxy runs, the address the ks-mc
// agents dial, the CA pin, the permissions. Each member is checked at its turn in Apply (a member
// that fails its checks does not stop the others).
func (m *Migrate) Preflight(ctx context.Context) *Plan[*MigratePlan] {
	plan := &Plan[*MigratePlan]{}
	hs := m.hostPreflight(ctx, plan.Findings())
	if m.opts.OnPreflight != nil {
		m.opts.OnPreflight(m.host.Context, plan.Findings())
	}
	if !plan.HasErrors() {
		plan.State = &MigratePlan{host: hs}
	}
	return plan
}

// Apply migrates every member in turn: its preflight, then the steps.
func (m *Migrate) Apply(ctx context.Context, plan *Plan[*MigratePlan]) (*MigrateResult, error) {
	res := &MigrateResult{HostContext: m.host.Context, Members: []MigrateMemberResult{}}
	if m.opts.DryRun.Enabled() {
		res.DryRun = m.opts.DryRun
	}
	if err := plan.Err(); err != nil {
		return res, err
	}
	hs := plan.State.host
	seen := map[string]string{}
	for _, c := range m.members {
		r := MigrateMemberResult{Context: c.Context}
		mm := &migrateMember{c: c, res: &r, deadline: time.Now().Add(m.opts.Timeout)}
		mm.log = NewChangeLog(&r.Changes, m.opts.DryRun, m.rep)
		m.rep.Step(fmt.Sprintf("member (%s):", c.Context))
		start := time.Now()
		m.migrateOne(ctx, hs, mm, seen)
		if r.Result == MigrateMigrated || r.Result == MigrateFailed || r.Result == MigrateWouldMigrate {
			r.Elapsed = time.Since(start).Round(100 * time.Millisecond).String()
		}
		if ctx.Err() != nil && r.Result == "" {
			r.Result, r.Reason = MigrateFailed, "interrupted: "+ctx.Err().Error()
		}
		r.Changed = len(r.Changes) > 0 && !m.opts.DryRun.Enabled()
		res.Changed = res.Changed || r.Changed
		switch r.Result {
		case MigrateMigrated:
			res.Summary.Migrated++
		case MigrateAlreadyMigrated:
			res.Summary.AlreadyMigrated++
		case MigrateWouldMigrate:
			res.Summary.WouldMigrate++
		case MigrateFailed:
			res.Summary.Failed++
		case MigrateSkipped:
			res.Summary.Skipped++
		}
		res.Members = append(res.Members, r)
		if ctx.Err() != nil {
			break
		}
	}
	var failed []MigrateMemberResult
	for _, r := range res.Members {
		if r.Result == MigrateFailed {
			failed = append(failed, r)
		}
	}
	if len(failed) > 0 {
		return res, &MigrateError{Failed: failed}
	}
	return res, nil
}

// migrateOne runs one member: preflight, then the steps, rolling back to the Tower agent when
// one fails before the Cluster is annotated.
func (m *Migrate) migrateOne(ctx context.Context, hs *migrateHost, mm *migrateMember, seen map[string]string) {
	r := mm.res
	p := m.memberPreflight(ctx, hs, mm, seen)
	r.Checks = p.Checks
	if m.opts.OnPreflight != nil {
		m.opts.OnPreflight(mm.c.Context, p)
	}
	if r.Result != "" { // skipped or already migrated
		if r.Result == MigrateSkipped {
			m.rep.Step(fmt.Sprintf("member (%s): skipped: %s", mm.c.Context, r.Reason))
		}
		return
	}
	if errs := p.Errors(); len(errs) > 0 {
		r.Result, r.Reason, r.Advice = MigrateFailed, errs[0].Message, errs[0].Hint
		if mm.tower != nil {
			r.Protocol = string(kubesphere.TunnelTower)
		}
		return
	}
	if mm.tower == nil {
		// The member already runs the ks-mc agent: only the annotation is missing.
		if err := m.annotate(ctx, mm); err != nil {
			r.Result, r.Reason = MigrateFailed, err.Error()
			r.Advice = "re-run migrate"
			return
		}
		r.Result, r.Protocol = m.doneResult(), string(kubesphere.TunnelKsMc)
		return
	}
	r.Protocol = string(kubesphere.TunnelTower)
	if err := m.steps(ctx, hs, mm); err != nil {
		r.Result = MigrateFailed
		r.Reason = manifests.Scrub(err.Error(), mm.token)
		var ae *migrateAdvice
		if errors.As(err, &ae) {
			r.Advice = ae.advice
		}
		if !ae.keptKsMc() {
			m.rollback(ctx, mm)
		} else {
			r.Protocol = string(kubesphere.TunnelKsMc)
		}
		return
	}
	r.Result = m.doneResult()
	if !m.opts.DryRun.Enabled() {
		r.Protocol = string(kubesphere.TunnelKsMc)
	}
}

func (m *Migrate) doneResult() string {
	if m.opts.DryRun.Enabled() {
		return MigrateWouldMigrate
	}
	return MigrateMigrated
}

// migrateAdvice is a step's error with the command or flag that fixes it.
type migrateAdvice struct {
	err    error
	advice string
	// ksmc: the failure came after the ks-mc session served and the Cluster was annotated: the
	// member stays on the ks-mc agent (no rollback).
	ksmc bool
}

func (e *migrateAdvice) Error() string { return e.err.Error() }
func (e *migrateAdvice) Unwrap() error { return e.err }

func (e *migrateAdvice) keptKsMc() bool { return e != nil && e.ksmc }

func (m *Migrate) change(mm *migrateMember, obj, action, summary string, patch map[string]any) {
	mm.log.Record(Change{Object: obj, Action: action, Summary: summary, Patch: patch})
}

// steps: render the ks-mc agent next to the Tower one, wait for its session to serve, annotate
// the Cluster, remove the Tower agent.
func (m *Migrate) steps(ctx context.Context, hs *migrateHost, mm *migrateMember) error {
	name := mm.cluster.GetName()
	ms := side(mm.c, "member")
	baseline := m.leaseRenewal(ctx, name)
	// 1. The ks-mc agent next to the Tower agent.
	objs, err := manifests.RenderAgent(kubesphere.TunnelKsMc, manifests.AgentValues{
		ClusterName: name, Token: mm.token, ProxyServer: hs.proxyAddress, Image: hs.agentImage, CACertHash: hs.caHash,
		DeploymentName: mm.deployName,
	})
	if err != nil {
		return err
	}
	if _, err := mm.c.Kube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.AgentTokenSecretName, metav1.GetOptions{}); err == nil {
		mm.secretExisted = true
	}
	for _, o := range objs {
		obj := fmt.Sprintf("%s %s %s/%s", ms, strings.ToLower(o.GetKind()), o.GetNamespace(), o.GetName())
		_, action, err := m.w.ServerSideApply(ctx, agentResource(mm.c, o), o)
		if err != nil {
			return &migrateAdvice{err: fmt.Errorf("member: apply %s %s/%s: %s", o.GetKind(), o.GetNamespace(), o.GetName(), manifests.Scrub(apiReason(err), mm.token)),
				advice: "check the permissions on the member and re-run migrate"}
		}
		if action == "" {
			m.rep.Step(obj + ": unchanged")
			continue
		}
		m.change(mm, obj, action, "the ks-mc agent next to the Tower agent (server-side apply, field manager ks-mc)", nil)
	}
	if m.opts.DryRun.Enabled() {
		mm.res.Pending = append(mm.res.Pending, "the ks-mc agent's session (the proxy's heartbeat Lease "+kubesphere.HeartbeatLeaseName(name)+" must say "+kubesphere.AgentProtocolAnnotation+": ks-mc before the Tower agent is removed)")
	} else {
		if err := WaitForRolloutUntil(ctx, mm.c, kubesphere.Namespace, mm.deployName, mm.deadline, m.opts.Timeout, m.rep); err != nil {
			return &migrateAdvice{err: fmt.Errorf("member: the ks-mc agent did not come up: %w", err),
				advice: fmt.Sprintf("see why: kubectl -n %s describe deployment %s%s; then re-run migrate (--agent-image to use another image)", kubesphere.Namespace, mm.deployName, mm.c.contextFlag())}
		}
		m.rep.Step(fmt.Sprintf("%s: the ks-mc agent rolled out", ms))
		// 2. Its session serves.
		if err := m.waitServes(ctx, mm, name, baseline); err != nil {
			return err
		}
	}
	// 3. The Cluster says ks-mc: the proxy never serves a Tower agent for it again.
	if err := m.annotate(ctx, mm); err != nil {
		return &migrateAdvice{err: err, advice: "re-run migrate"}
	}
	// 4. The Tower agent goes.
	obj := fmt.Sprintf("%s deployment %s/%s", ms, kubesphere.Namespace, kubesphere.AgentName)
	m.change(mm, obj, "delete", "the Tower agent (its token is in its command line)", nil)
	{
		prop := metav1.DeletePropagationBackground
		err := m.w.Delete(ctx, Deployments(mm.c, kubesphere.Namespace), kubesphere.AgentName, metav1.DeleteOptions{PropagationPolicy: &prop})
		if err != nil {
			return &migrateAdvice{ksmc: true, err: fmt.Errorf("member: delete the Tower agent deployment %s/%s: %w (the ks-mc agent serves; the proxy refuses the Tower agent now)", kubesphere.Namespace, kubesphere.AgentName, err),
				advice: fmt.Sprintf("re-run migrate, or delete it: kubectl -n %s delete deployment %s%s", kubesphere.Namespace, kubesphere.AgentName, mm.c.contextFlag())}
		}
	}
	return nil
}

// annotate merge-patches the Cluster's annotations (the proxy's downgrade protection, and the
// agent Deployment's name for render, join and unjoin).
func (m *Migrate) annotate(ctx context.Context, mm *migrateMember) error {
	name := mm.cluster.GetName()
	ann := map[string]any{}
	cur := mm.cluster.GetAnnotations()
	if cur[kubesphere.AgentProtocolAnnotation] != string(kubesphere.TunnelKsMc) {
		ann[kubesphere.AgentProtocolAnnotation] = string(kubesphere.TunnelKsMc)
	}
	if mm.deployName != "" && mm.deployName != kubesphere.AgentName && cur[kubesphere.AgentDeploymentAnnotation] != mm.deployName {
		ann[kubesphere.AgentDeploymentAnnotation] = mm.deployName
	}
	if len(ann) == 0 {
		return nil
	}
	patch := MergePatch{}
	patch.Set(ann, "metadata", "annotations")
	obj := "host Cluster " + name
	if m.host.Context != "" {
		obj = side(m.host, "host") + " Cluster " + name
	}
	m.change(mm, obj, "patch", "the member runs the ks-mc agent: the proxy serves no Tower agent for it any more", patch)
	if _, err := m.w.MergePatch(ctx, DynamicResource(m.host, kubesphere.ClusterGVR, ""), name, patch); err != nil {
		why := ""
		if IsClusterWebhookRefusal(err) {
			why = " (KubeSphere's Cluster webhook could not reach the member through the tunnel)"
		}
		return fmt.Errorf("annotate Cluster %s on the host%s: %w", name, why, err)
	}
	return nil
}

// rollback removes the ks-mc agent this run added, so the member stays on its working Tower agent.
func (m *Migrate) rollback(ctx context.Context, mm *migrateMember) {
	if m.opts.DryRun.Enabled() || mm.deployName != kubesphere.MigratedAgentName {
		return
	}
	ms := side(mm.c, "member")
	// A fresh context: an interrupted run still cleans up.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := mm.c.Kube.AppsV1().Deployments(kubesphere.Namespace).Delete(cctx, kubesphere.MigratedAgentName, metav1.DeleteOptions{})
	switch {
	case err == nil:
		m.change(mm, fmt.Sprintf("%s deployment %s/%s", ms, kubesphere.Namespace, kubesphere.MigratedAgentName), "delete", "rollback: the member stays on its Tower agent", nil)
	case !apierrors.IsNotFound(err):
		mm.res.Reason += fmt.Sprintf("; rollback failed: delete deployment %s/%s: %v (delete it: kubectl -n %s delete deployment %s%s)",
			kubesphere.Namespace, kubesphere.MigratedAgentName, err, kubesphere.Namespace, kubesphere.MigratedAgentName, mm.c.contextFlag())
	}
	if !mm.secretExisted {
		err := mm.c.Kube.CoreV1().Secrets(kubesphere.Namespace).Delete(cctx, kubesphere.AgentTokenSecretName, metav1.DeleteOptions{})
		if err == nil {
			m.change(mm, fmt.Sprintf("%s secret %s/%s", ms, kubesphere.Namespace, kubesphere.AgentTokenSecretName), "delete", "rollback: the ks-mc agent's token", nil)
		}
	}
	m.rep.Warn(fmt.Sprintf("%s: left on its Tower agent", ms))
}
