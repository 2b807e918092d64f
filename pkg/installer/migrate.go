package installer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
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

func (m *Migrate) hostPreflight(ctx context.Context, p *Preflight) *migrateHost {
	h := side(m.host, "host")
	hint := initHostHint(m.host)
	if _, err := m.host.Kube.Discovery().ServerVersion(); err != nil {
		p.Error("check --host-context/--host-kubeconfig and that the API server is up", "%s: unreachable: %v", h, err)
		return nil
	}
	cc, err := GetClusterConfiguration(ctx, m.host)
	if err != nil {
		if errors.Is(err, ErrKubeSphereNotInstalled) {
			p.Error(InstallKubeSphereHint, "%s: KubeSphere is not installed (no %s)", h, ccObject)
		} else {
			p.Error("", "%s: %v", h, err)
		}
		return nil
	}
	if role := cc.ClusterRole(); role != kubesphere.RoleHost {
		p.Error(hint, "%s: multicluster.clusterRole is %q, not host", h, role)
		return nil
	}
	cfg, err := GetKubeSphereConfig(ctx, m.host)
	if err != nil {
		p.Error("", "%s: %v", h, err)
		return nil
	}
	tower, err := m.host.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		p.Error(hint+" --tunnel=ks-mc", "%s: Deployment %s/%s (the proxy) does not exist", h, kubesphere.Namespace, kubesphere.TowerName)
		return nil
	case err != nil:
		p.Error("", "%s: get deployment %s/%s: %v", h, kubesphere.Namespace, kubesphere.TowerName, err)
		return nil
	}
	if TunnelOf(tower) != kubesphere.TunnelKsMc {
		p.Error(fmt.Sprintf("switch the host first: kubectl ks-mc init-host%s --tunnel=ks-mc (its proxy keeps serving the Tower agents)", m.host.contextFlag()),
			"%s: Deployment %s/%s runs KubeSphere's Tower, not the ks-mc proxy: there is nothing to migrate to", h, kubesphere.Namespace, kubesphere.TowerName)
		return nil
	}
	if ready, why := DeploymentRolledOut(tower); !ready {
		p.Error("wait for it: kubectl -n kubesphere-system rollout status deployment/tower"+m.host.contextFlag(), "%s: the ks-mc proxy is not rolled out: %s", h, why)
		return nil
	}
	hs := &migrateHost{towerAgents: manifests.ProxyTowerAgents(tower)}
	p.OK("%s: the ks-mc proxy runs (Tower agents: %s)", h, hs.towerAgents)
	addr := HostProxyAddress(ctx, m.host, cc, cfg)
	if addr == "" {
		p.Error(hint+" --tunnel=ks-mc --proxy-publish-address=https://HOST:PORT", "%s: no proxy address is published", h)
		return nil
	}
	if norm, err := ValidateProxyAddress(addr); err != nil {
		p.Error(hint, "%s: %v", h, err)
		return nil
	} else {
		addr = norm
	}
	if err := PlaintextAgentRefused(kubesphere.TunnelKsMc, addr, tower); err != nil {
		p.Error(PlaintextAgentAdvice(m.host, addr), "%s: %v", h, err)
		return nil
	}
	hs.proxyAddress = addr
	hs.caHash = m.opts.CACertHash
	if strings.HasPrefix(addr, "https://") && hs.caHash == "" {
		pin, err := ProxyCACertHash(ctx, m.host)
		if err != nil {
			p.Error("pass --ca-cert-hash=sha256:… (the annotation ks-mc.io/ca-cert-hash of that Secret)", "%s: the proxy address is https but its CA cannot be pinned: %v", h, err)
			return nil
		}
		hs.caHash = pin
	}
	p.OK("%s: the ks-mc agents will dial %s", h, addr)
	hs.agentImage = m.opts.AgentImage
	hostAccess, _ := MigrateAccess()
	checkAccessSide(ctx, p, m.host, h, hostAccess)
	if hs.uid, err = KubeSystemUID(ctx, m.host); err != nil {
		p.Error("", "%s: %v", h, err)
		return nil
	}
	if hs.clusters, err = ListClusters(ctx, m.host); err != nil {
		p.Error("", "%s: %v", h, err)
		return nil
	}
	return hs
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

func (m *Migrate) memberPreflight(ctx context.Context, hs *migrateHost, mm *migrateMember, seen map[string]string) *Preflight {
	p := &Preflight{}
	r := mm.res
	ms := side(mm.c, "member")
	uid, err := KubeSystemUID(ctx, mm.c)
	if err != nil {
		p.Error("check --context and that the API server is up", "%s: unreachable: %v", ms, err)
		return p
	}
	mm.uid = uid
	if uid == hs.uid {
		r.Result, r.Reason = MigrateSkipped, "it is the host itself"
		return p
	}
	if prev, ok := seen[uid]; ok {
		r.Result, r.Reason = MigrateSkipped, "the same cluster as context "+prev
		return p
	}
	seen[uid] = mm.c.Context
	for i := range hs.clusters {
		c := &hs.clusters[i]
		if !IsHostCluster(c) && ClusterMemberUID(c) == uid {
			mm.cluster = c
		}
	}
	if mm.cluster == nil {
		if m.opts.SkipUnmatched {
			r.Result, r.Reason = MigrateSkipped, "not a member of this host (no Cluster with kube-system UID "+uid+")"
			return p
		}
		p.Error(fmt.Sprintf("join it first: kubectl ks-mc join%s --host-context %s", mm.c.contextFlag(), m.host.Context),
			"%s: no Cluster of the host belongs to it (kube-system UID %s)", ms, uid)
		return p
	}
	name := mm.cluster.GetName()
	r.Name = name
	if typ, _, _ := unstructured.NestedString(mm.cluster.Object, "spec", "connection", "type"); typ != "proxy" {
		r.Result, r.Reason = MigrateSkipped, fmt.Sprintf("Cluster %s is a %q connection: it uses no agent", name, typ)
		return p
	}
	mm.token, _, _ = unstructured.NestedString(mm.cluster.Object, "spec", "connection", "token")
	if mm.token == "" {
		p.Error("check the host's proxy: kubectl -n kubesphere-system logs deployment/tower"+m.host.contextFlag(), "Cluster %s has no spec.connection.token", name)
		return p
	}
	mm.annotated = mm.cluster.GetAnnotations()[kubesphere.AgentProtocolAnnotation] == string(kubesphere.TunnelKsMc)
	ds, err := GetAgentDeployments(ctx, mm.c)
	if err != nil {
		p.Error("", "%s: %v", ms, err)
		return p
	}
	for _, d := range ds {
		info := InspectAgent(d)
		if info.ClusterName != "" && info.ClusterName != name {
			p.Error(fmt.Sprintf("check the member: kubectl -n %s get deployment %s -o yaml%s", kubesphere.Namespace, d.Name, mm.c.contextFlag()),
				"%s: Deployment %s/%s serves cluster %q, not %q", ms, kubesphere.Namespace, d.Name, info.ClusterName, name)
			return p
		}
		switch {
		case info.Tunnel == kubesphere.TunnelTower && d.Name == kubesphere.AgentName:
			mm.tower = d
		case info.Tunnel == kubesphere.TunnelKsMc:
			mm.ksmc = d
		}
	}
	switch {
	case mm.tower == nil && mm.ksmc == nil:
		p.Error(fmt.Sprintf("re-run join, which renders the ks-mc agent: kubectl ks-mc join%s --host-context %s --name %s", mm.c.contextFlag(), m.host.Context, name),
			"%s: no agent Deployment (neither the Tower agent %s nor a ks-mc agent)", ms, kubesphere.AgentName)
		return p
	case mm.tower == nil && mm.annotated:
		r.Result, r.Protocol = MigrateAlreadyMigrated, string(kubesphere.TunnelKsMc)
		r.Reason = fmt.Sprintf("already migrated: the member runs the ks-mc agent (Deployment %s/%s)", kubesphere.Namespace, mm.ksmc.Name)
		m.rep.Step(fmt.Sprintf("member (%s): Cluster %s already migrated (ks-mc agent %s/%s): nothing to change", mm.c.Context, name, kubesphere.Namespace, mm.ksmc.Name))
		return p
	case mm.tower == nil:
		p.OK("%s: runs the ks-mc agent already (Deployment %s/%s); the Cluster lacks %s", ms, kubesphere.Namespace, mm.ksmc.Name, kubesphere.AgentProtocolAnnotation)
		mm.deployName = mm.ksmc.Name
		return p
	}
	mm.deployName = kubesphere.MigratedAgentName
	if mm.ksmc != nil && mm.ksmc.Name == kubesphere.MigratedAgentName {
		p.OK("%s: Tower agent %s/%s and a ks-mc agent %s/%s from an earlier run: continuing", ms, kubesphere.Namespace, kubesphere.AgentName, kubesphere.Namespace, mm.ksmc.Name)
	} else {
		p.OK("%s: Tower agent %s/%s for Cluster %s: the ks-mc agent %s/%s will run next to it", ms, kubesphere.Namespace, kubesphere.AgentName, name, kubesphere.Namespace, kubesphere.MigratedAgentName)
	}
	if hs.towerAgents == "never" {
		p.Warn("", "the proxy refuses Tower agents (--tower-agents=never): the member is disconnected until its ks-mc agent connects")
	} else if mm.annotated {
		p.Warn("", "Cluster %s says %s: ks-mc, so the proxy no longer serves its Tower agent: the member is disconnected until its ks-mc agent connects", name, kubesphere.AgentProtocolAnnotation)
	}
	_, memberAccess := MigrateAccess()
	checkAccessSide(ctx, p, mm.c, ms, memberAccess)
	return p
}

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

// leaseRenewal is the heartbeat Lease's renewTime before the ks-mc agent starts (zero when none).
func (m *Migrate) leaseRenewal(ctx context.Context, cluster string) time.Time {
	l, err := m.host.Kube.CoordinationV1().Leases(kubesphere.Namespace).Get(ctx, kubesphere.HeartbeatLeaseName(cluster), metav1.GetOptions{})
	if err != nil || l.Spec.RenewTime == nil {
		return time.Time{}
	}
	return l.Spec.RenewTime.Time
}

// LeaseProtocol reads the protocol of a cluster's connected agent sessions from the proxy's
// heartbeat Lease: ks-mc or tower; "" when the Lease says nothing (an older proxy, or no session).
func LeaseProtocol(l *coordinationv1.Lease) string {
	if l == nil {
		return ""
	}
	return l.Annotations[kubesphere.AgentProtocolAnnotation]
}

// leaseServesKsMc reports whether a Lease renewed after baseline says a ks-mc session answered.
func leaseServesKsMc(l *coordinationv1.Lease, baseline time.Time) (bool, string) {
	if l == nil {
		return false, "no heartbeat Lease yet"
	}
	agents, _ := strconv.Atoi(l.Annotations[kubesphere.HeartbeatAgentsAnnotation])
	proto := LeaseProtocol(l)
	renewed := l.Spec.RenewTime != nil && l.Spec.RenewTime.After(baseline)
	switch {
	case proto != string(kubesphere.TunnelKsMc):
		if proto == "" {
			proto = "none"
		}
		return false, fmt.Sprintf("heartbeat: protocol %s, %d session(s)", proto, agents)
	case agents == 0:
		return false, "heartbeat: protocol ks-mc, 0 sessions answered"
	case !renewed:
		return false, "heartbeat: not renewed since the ks-mc agent started"
	}
	return true, fmt.Sprintf("heartbeat: protocol ks-mc, %d session(s) answered a ping", agents)
}

// waitServes waits until the proxy's heartbeat Lease says a ks-mc session of cluster answers,
// then sends one request through the per-cluster listener.
func (m *Migrate) waitServes(ctx context.Context, mm *migrateMember, cluster string, baseline time.Time) error {
	leaseName := kubesphere.HeartbeatLeaseName(cluster)
	for {
		l, err := m.host.Kube.CoordinationV1().Leases(kubesphere.Namespace).Get(ctx, leaseName, metav1.GetOptions{})
		var observed string
		switch {
		case apierrors.IsNotFound(err):
			observed = "no heartbeat Lease " + leaseName + " yet"
		case err != nil:
			observed = err.Error()
		default:
			ok, why := leaseServesKsMc(l, baseline)
			observed = why
			if ok {
				mm.res.Evidence = append(mm.res.Evidence, why)
				m.rep.Step(fmt.Sprintf("host: the ks-mc session of %s serves (%s)", cluster, why))
				return m.probe(ctx, mm, cluster)
			}
		}
		m.rep.Progress(fmt.Sprintf("waiting for the ks-mc session of %s: %s (%s left)", cluster, observed, max(time.Until(mm.deadline).Round(time.Second), 0)))
		if time.Now().After(mm.deadline) {
			return &migrateAdvice{err: fmt.Errorf("timed out after %s waiting for the ks-mc agent's session (last seen: %s)", m.opts.Timeout, observed),
				advice: fmt.Sprintf("see why it does not connect: kubectl -n %s logs deployment/%s%s, and kubectl ks-mc diagnose --host-context %s%s",
					kubesphere.Namespace, mm.deployName, mm.c.contextFlag(), m.host.Context, mm.c.contextFlag())}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(m.opts.PollInterval):
		}
	}
}

// probe sends requests through the per-cluster listener until one is answered (or the member's
// time is up). The proxy sends new requests to the ks-mc session once it is up, so an answer now
// went through it.
func (m *Migrate) probe(ctx context.Context, mm *migrateMember, cluster string) error {
	var last error
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := m.opts.Probe(pctx, m.host, cluster)
		cancel()
		if err == nil {
			ev := "a request through the per-cluster listener (" + kubesphere.ServicePrefix + cluster + ") was answered"
			mm.res.Evidence = append(mm.res.Evidence, ev)
			m.rep.Step("host: " + ev)
			return nil
		}
		if errors.Is(err, ErrListenerUnreachable) {
			ev := "the per-cluster listener is not reachable from this machine (" + firstLine(err.Error()) + "): the heartbeat is the evidence"
			mm.res.Evidence = append(mm.res.Evidence, ev)
			m.rep.Warn(ev)
			return nil
		}
		last = err
		m.rep.Progress(fmt.Sprintf("waiting for a request through %s%s to be answered: %s", kubesphere.ServicePrefix, cluster, firstLine(err.Error())))
		if time.Now().After(mm.deadline) {
			return &migrateAdvice{err: fmt.Errorf("the ks-mc session is up but no request through the per-cluster listener was answered: %w", last),
				advice: fmt.Sprintf("kubectl ks-mc diagnose --host-context %s%s", m.host.Context, mm.c.contextFlag())}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(m.opts.PollInterval):
		}
	}
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

// ErrListenerUnreachable marks a probe whose request did not reach the per-cluster listener from
// this machine at all (as opposed to one the member answered).
var ErrListenerUnreachable = errors.New("per-cluster listener unreachable")

// ProbeClusterListener sends GET /version through the per-cluster listener of cluster, the way
// ks-apiserver reaches a member: through the host apiserver's service proxy to Service mc-<cluster>.
// An answer of the member's apiserver (also 401/403 for the anonymous request) proves the tunnel.
// Any other error is inconclusive and wraps ErrListenerUnreachable: the service proxy may have no
// route to the proxy pod at all (no endpoints, an egress policy, "address not allowed"), and a
// listener without a session would have failed ks-apiserver's requests already.
func ProbeClusterListener(ctx context.Context, host *Clients, cluster string) error {
	return classifyProbeError(serviceProxyVersion(ctx, host, cluster))
}

// classifyProbeError: an answer of the ks-mc proxy's per-cluster listener itself (its 503/502
// Status "ks-mc proxy: cluster …", pkg/tunnel/listener.go) reached the listener and says no agent
// served: that is conclusive and returned as is. Any other error is inconclusive (wraps
// ErrListenerUnreachable).
func classifyProbeError(err error) error {
	if err == nil {
		return nil
	}
	if strings.Contains(err.Error(), "ks-mc proxy: cluster ") {
		return err
	}
	return fmt.Errorf("%w: %v", ErrListenerUnreachable, err)
}
