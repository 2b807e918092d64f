package installer

import (
	"context"
	"errors"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// JoinOptions configure a join of a member to a host.
type JoinOptions struct {
	// Name of the Cluster on the host (a DNS label of at most 60 characters).
	Name string
	// Tunnel is tower, ks-mc or auto (ks-mc when the host's tower Deployment runs the ks-mc proxy).
	Tunnel kubesphere.Tunnel
	// Cluster metadata.
	Provider, Description, Group, Region string
	Labels                               map[string]string
	// AgentImage overrides the agent image (Tower: the host's multicluster.agentImage; ks-mc: this
	// build's image).
	AgentImage string
	// CACertHash pins the host proxy's CA for the bundled agent (needed with an https proxy address).
	CACertHash string
	// Timeout bounds the whole join (installer run, token, rollout, connection). Default 10m.
	Timeout time.Duration
	DryRun  DryRun
	// PollInterval between checks while waiting (default 2s).
	PollInterval time.Duration
	// OnPreflight receives all checks of both sides before any change (also when they fail).
	OnPreflight func(*Preflight)
	// Clock measures API server clocks (default APIServerClock); unit tests replace it.
	Clock ServerClock
}

// JoinResult is the machine-readable outcome of a join.
type JoinResult struct {
	Name         string            `json:"name"`
	HostContext  string            `json:"hostContext,omitempty"`
	Context      string            `json:"context,omitempty"`
	Tunnel       kubesphere.Tunnel `json:"tunnel"`
	ProxyAddress string            `json:"proxyAddress"`
	MemberUID    string            `json:"memberUID"`
	// Adopted is true when the Cluster already existed for this member (a re-run).
	Adopted bool     `json:"adopted"`
	DryRun  DryRun   `json:"dryRun,omitempty"`
	Changed bool     `json:"changed"`
	Changes []Change `json:"changes"`
	// Conditions of the Cluster at the end.
	Conditions []kubesphere.ClusterCondition `json:"conditions,omitempty"`
	// HostObjects and MemberObjects are what was (or, in a dry run, would be) applied to each
	// cluster, secrets redacted. The member's ClusterConfiguration appears as its merge patch.
	HostObjects   []*unstructured.Unstructured `json:"-"`
	MemberObjects []*unstructured.Unstructured `json:"-"`
	// Pending lists what a dry run could not determine without applying.
	Pending []string `json:"pending,omitempty"`
}

// joinState is what preflight learned.
type joinState struct {
	hostCC, memberCC   *ClusterConfiguration
	hostCfg, memberCfg *KubeSphereConfig
	hostUID, memberUID string
	proxyAddress       string
	tunnel             kubesphere.Tunnel
	agentImage         string
	existing           *unstructured.Unstructured
	agent              *appsv1.Deployment
	// caHash pins the bundled proxy's CA (https proxy addresses).
	caHash string
	// agentName is the agent Deployment to render: kubesphere.AgentName, or MigratedAgentName on a
	// member moved by migrate (the ks-mc agent keeps the Deployment it was migrated to).
	agentName string
}

// Join connects a member to a host through the agent tunnel. It never prints: progress goes to
// rep, preflight results to opts.OnPreflight.
type Join struct {
	host, member *Clients
	opts         JoinOptions
	rep          Reporter
	deadline     time.Time
	result       *JoinResult
	log          *ChangeLog
	w            Writer
	// jwt is the host's jwtSecret: used for the member patch and compared, never printed.
	jwt Secret
	// token is the agent token of the Cluster (never printed).
	token string
}

// NewJoin prepares a join.
func NewJoin(host, member *Clients, opts JoinOptions, rep Reporter) *Join {
	defaultDuration(&opts.Timeout, 10*time.Minute)
	defaultDuration(&opts.PollInterval, 2*time.Second)
	if opts.Clock == nil {
		opts.Clock = APIServerClock
	}
	if opts.Tunnel == "" {
		opts.Tunnel = kubesphere.TunnelAuto
	}
	if opts.DryRun == "" {
		opts.DryRun = DryRunNone
	}
	return &Join{host: host, member: member, opts: opts, rep: reporterOrNop(rep), w: Writer{DryRun: opts.DryRun}}
}

// JoinAccess is what join needs to be allowed to do on each side.
func JoinAccess() (host, member []Access) {
	host = []Access{
		{Verb: "get", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "list", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "create", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "patch", Group: "cluster.kubesphere.io", Resource: "clusters"},
		{Verb: "get", Resource: "configmaps", Namespace: kubesphere.Namespace, Name: kubesphere.ConfigName},
	}
	member = []Access{
		{Verb: "patch", Group: "installer.kubesphere.io", Resource: "clusterconfigurations", Namespace: kubesphere.Namespace, Name: kubesphere.ClusterConfigurationName},
		{Verb: "create", Group: "apps", Resource: "deployments", Namespace: kubesphere.Namespace},
		{Verb: "patch", Group: "apps", Resource: "deployments", Namespace: kubesphere.Namespace},
		{Verb: "create", Resource: "secrets", Namespace: kubesphere.Namespace},
		{Verb: "patch", Resource: "secrets", Namespace: kubesphere.Namespace},
	}
	return host, member
}

func side(c *Clients, what string) string {
	if c != nil && c.Context != "" {
		return what + " (" + c.Context + ")"
	}
	return what
}

func initHostHint(host *Clients) string {
	return "run `kubectl ks-mc init-host" + host.contextFlag() + "` first"
}

// Run performs the join: Preflight (its checks go to opts.OnPreflight, also when they fail), then
// Apply. Errors never carry the jwtSecret or the agent token, even when an API error quotes a value.
func (j *Join) Run(ctx context.Context) (*JoinResult, error) {
	j.start()
	plan := j.Preflight(ctx)
	if j.opts.OnPreflight != nil {
		j.opts.OnPreflight(plan.Findings())
	}
	return j.Apply(ctx, plan)
}

// Apply performs a plan from Preflight: member settings, the Cluster, its token, the agent, and
// the wait for Ready (steps below). A plan with a failed check is refused; nothing is changed.
func (j *Join) Apply(ctx context.Context, plan *Plan[*joinState]) (*JoinResult, error) {
	res, err := j.apply(ctx, plan)
	if err != nil {
		if msg := manifests.Scrub(err.Error(), j.secrets()...); msg != err.Error() {
			err = errors.New(msg)
		}
	}
	return res, err
}

// start sets the deadline (the timeout bounds preflight too) and the empty result.
func (j *Join) start() {
	if j.result != nil {
		return
	}
	j.deadline = time.Now().Add(j.opts.Timeout)
	j.result = &JoinResult{Name: j.opts.Name, HostContext: j.host.Context, Context: j.member.Context}
	j.log = NewChangeLog(&j.result.Changes, j.opts.DryRun, j.rep)
	if j.opts.DryRun.Enabled() {
		j.result.DryRun = j.opts.DryRun
	}
}

func (j *Join) secrets() []string {
	out := []string{j.jwt.Reveal()}
	if j.token != "" && j.token != pendingToken {
		out = append(out, j.token)
	}
	return out
}

func (j *Join) apply(ctx context.Context, plan *Plan[*joinState]) (*JoinResult, error) {
	j.start()
	if err := plan.Err(); err != nil {
		return j.result, err
	}
	st, r := plan.State, j.result
	r.Tunnel, r.ProxyAddress, r.MemberUID = st.tunnel, st.proxyAddress, st.memberUID
	r.Adopted = st.existing != nil

	if err := j.memberSettings(ctx, st); err != nil {
		return r, err
	}
	cluster, err := j.applyCluster(ctx, st)
	if err != nil {
		return r, err
	}
	token, err := j.waitToken(ctx, cluster)
	if err != nil {
		return r, err
	}
	j.token = token
	if err := j.applyAgent(ctx, st, token); err != nil {
		return r, err
	}
	if !j.opts.DryRun.Enabled() {
		if err := j.waitConnected(ctx, st, token); err != nil {
			return r, err
		}
	}
	r.Changed = j.log.Changed()
	return r, nil
}

func (j *Join) remaining() time.Duration {
	d := time.Until(j.deadline)
	if d < time.Second {
		d = time.Second
	}
	return d
}
