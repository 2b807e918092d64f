package installer

import (
	"context"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// UnjoinOptions configure an unjoin.
type UnjoinOptions struct {
	// Name of the Cluster on the host; when empty it is found by the member's kube-system UID.
	Name string
	// Force deletes the Cluster even when the member is unreachable (or bound to another UID), and
	// removes its finalizer when KubeSphere cannot finish the deletion.
	Force   bool
	Timeout time.Duration
	DryRun  DryRun
	// PollInterval between checks (default 2s).
	PollInterval time.Duration
}

// UnjoinResult is the machine-readable outcome of an unjoin.
type UnjoinResult struct {
	Name    string   `json:"name"`
	DryRun  DryRun   `json:"dryRun,omitempty"`
	Changed bool     `json:"changed"`
	Changes []Change `json:"changes"`
	// LeftBehind says what stays and how to remove it.
	LeftBehind []string `json:"leftBehind,omitempty"`
}

// Unjoin removes a member: the Cluster on the host first (KubeSphere 3.4's webhook needs the member
// reachable for it), then the agent on the member. member may be nil with Force (the member is gone).
// It is NewUnjoin's Preflight then Apply.
func Unjoin(ctx context.Context, host, member *Clients, opts UnjoinOptions, rep Reporter) (*UnjoinResult, error) {
	u := NewUnjoin(host, member, opts, rep)
	return u.Apply(ctx, u.Preflight(ctx))
}

// Unjoiner is one unjoin in the operation shape (see opshape.go).
type Unjoiner struct {
	host, member *Clients
	opts         UnjoinOptions
	rep          Reporter
	w            Writer
	res          *UnjoinResult
	log          *ChangeLog
}

// unjoinState is what the unjoin preflight found.
type unjoinState struct {
	// memberErr is why the member cannot be read (nil when it can); with Force only the host side
	// is cleaned up then.
	memberErr error
	memberUID string
	// cluster is the member's Cluster on the host (nil: already removed).
	cluster *unstructured.Unstructured
	// agent is the member's agent Deployment when it serves this Cluster.
	agent        AgentInfo
	agentPresent bool
	// agents are every agent Deployment that serves this Cluster: cluster-agent and, on a member
	// moved by migrate (or stopped half-way), the ks-mc agent next to it.
	agents []string
}

// NewUnjoin prepares an unjoin.
func NewUnjoin(host, member *Clients, opts UnjoinOptions, rep Reporter) *Unjoiner {
	defaultDuration(&opts.Timeout, 5*time.Minute)
	defaultDuration(&opts.PollInterval, 2*time.Second)
	u := &Unjoiner{host: host, member: member, opts: opts, rep: reporterOrNop(rep), w: Writer{DryRun: opts.DryRun}}
	u.res = &UnjoinResult{Name: opts.Name}
	if opts.DryRun.Enabled() {
		u.res.DryRun = opts.DryRun
	}
	u.log = NewChangeLog(&u.res.Changes, opts.DryRun, u.rep)
	return u
}

// Preflight finds the member's identity, its Cluster on the host and its agent; it changes
// nothing. A blocked plan carries the one error that says what to pass.
func (u *Unjoiner) Preflight(ctx context.Context) *Plan[*unjoinState] {
	plan := &Plan[*unjoinState]{}
	st := &unjoinState{}
	if err := u.preflight(ctx, st); err != nil {
		plan.Block(err)
		return plan
	}
	plan.State = st
	return plan
}

func (u *Unjoiner) preflight(ctx context.Context, st *unjoinState) error {
	host, member, opts := u.host, u.member, u.opts
	// The member's identity, when it is reachable.
	if member != nil {
		st.memberUID, st.memberErr = KubeSystemUID(ctx, member)
	} else {
		st.memberErr = fmt.Errorf("no member context given")
	}
	if st.memberErr != nil && !opts.Force {
		return fmt.Errorf("member%s: %w\nto remove the Cluster from the host anyway (the member is gone), re-run with --force", member.contextFlag(), st.memberErr)
	}
	if st.memberErr != nil {
		u.rep.Warn(fmt.Sprintf("member unreachable (%v): --force, only the host side is cleaned up", st.memberErr))
	}
	if err := u.findCluster(ctx, host, st); err != nil {
		return err
	}
	if c := st.cluster; c != nil {
		u.res.Name = c.GetName()
		if IsHostCluster(c) {
			return fmt.Errorf("cluster %s is the host's own cluster: refusing to delete it", c.GetName())
		}
		if uid := ClusterMemberUID(c); uid != "" && st.memberUID != "" && uid != st.memberUID && !opts.Force {
			return fmt.Errorf("cluster %s belongs to another cluster (kube-system UID %s, the given member's is %s): check --name and --context (or --force to delete it anyway)",
				c.GetName(), uid, st.memberUID)
		}
	} else {
		u.rep.Step("host: no Cluster for this member (already removed)")
	}
	return u.findAgent(ctx, st)
}

// findCluster finds the Cluster by --name, else by the member's kube-system UID.
func (u *Unjoiner) findCluster(ctx context.Context, host *Clients, st *unjoinState) error {
	if u.opts.Name != "" {
		if err := manifests.ValidateClusterName(u.opts.Name); err != nil {
			return err
		}
		c, err := GetCluster(ctx, host, u.opts.Name)
		if err != nil {
			return fmt.Errorf("host: %w", err)
		}
		st.cluster = c
		return nil
	}
	if st.memberUID == "" {
		return fmt.Errorf("cannot find the Cluster without the member: pass --name")
	}
	clusters, err := ListClusters(ctx, host)
	if err != nil {
		return fmt.Errorf("host: %w", err)
	}
	for i := range clusters {
		if ClusterMemberUID(&clusters[i]) == st.memberUID && !IsHostCluster(&clusters[i]) {
			st.cluster = &clusters[i]
			return nil
		}
	}
	return nil
}

// findAgent reads the member's agent: only one that serves this Cluster (or this host's proxy)
// is removed.
func (u *Unjoiner) findAgent(ctx context.Context, st *unjoinState) error {
	if st.memberErr != nil {
		return nil
	}
	ds, err := GetAgentDeployments(ctx, u.member)
	if err != nil {
		return fmt.Errorf("member: %w", err)
	}
	for _, d := range ds {
		info := InspectAgent(d)
		if u.res.Name == "" {
			u.res.Name = info.ClusterName
		}
		if u.res.Name != "" && info.ClusterName != "" && info.ClusterName != u.res.Name {
			u.rep.Warn(fmt.Sprintf("member: Deployment %s/%s serves cluster %q, not %q: left in place", kubesphere.Namespace, d.Name, info.ClusterName, u.res.Name))
			continue
		}
		if !st.agentPresent {
			st.agent = info
		}
		st.agentPresent = true
		st.agents = append(st.agents, d.Name)
	}
	return nil
}

// Apply removes what the plan found: (1) the Cluster on the host, waiting until KubeSphere
// finished deleting it; (2) the agent on the member.
func (u *Unjoiner) Apply(ctx context.Context, plan *Plan[*unjoinState]) (*UnjoinResult, error) {
	if err := plan.Err(); err != nil {
		return u.res, err
	}
	st := plan.State
	if err := u.deleteCluster(ctx, st); err != nil {
		return u.res, err
	}
	if err := u.deleteAgent(ctx, st); err != nil {
		return u.res, err
	}
	u.res.Changed = u.log.Changed()
	return u.res, nil
}

func (u *Unjoiner) deleteCluster(ctx context.Context, st *unjoinState) error {
	if st.cluster == nil {
		return nil
	}
	name := st.cluster.GetName()
	u.log.Record(Change{Object: "host Cluster " + name, Action: "delete", Summary: "KubeSphere unregisters the member"})
	if err := u.w.Delete(ctx, DynamicResource(u.host, kubesphere.ClusterGVR, ""), name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete Cluster %s on the host: %w", name, err)
	}
	if u.opts.DryRun.Enabled() {
		return nil
	}
	return u.waitClusterGone(ctx, name)
}

func (u *Unjoiner) deleteAgent(ctx context.Context, st *unjoinState) error {
	if st.memberErr != nil {
		u.res.LeftBehind = append(u.res.LeftBehind,
			fmt.Sprintf("on the member (unreachable): Deployment %s/%s, Secret %s/%s (ks-mc agent only) and the member settings in its ClusterConfiguration; "+
				"if it comes back, delete them: kubectl -n %s delete deployment %s; kubectl -n %s delete secret %s --ignore-not-found",
				kubesphere.Namespace, kubesphere.AgentName, kubesphere.Namespace, kubesphere.AgentTokenSecretName,
				kubesphere.Namespace, kubesphere.AgentName, kubesphere.Namespace, kubesphere.AgentTokenSecretName))
		return nil
	}
	member := u.member
	for _, name := range st.agents {
		tun := st.agent.Tunnel
		if name == kubesphere.MigratedAgentName {
			tun = kubesphere.TunnelKsMc
		}
		u.log.Record(Change{Object: fmt.Sprintf("member deployment %s/%s", kubesphere.Namespace, name), Action: "delete", Summary: fmt.Sprintf("the %s agent", tun)})
		if err := u.w.Delete(ctx, Deployments(member, kubesphere.Namespace), name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("member: delete deployment %s/%s: %w", kubesphere.Namespace, name, err)
		}
	}
	sec, err := member.Kube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.AgentTokenSecretName, metav1.GetOptions{})
	if err == nil && sec.Labels[kubesphere.ManagedByLabel] == kubesphere.ManagedByValue && (st.agentPresent || st.agent.ClusterName == "") {
		u.log.Record(Change{Object: fmt.Sprintf("member secret %s/%s", kubesphere.Namespace, kubesphere.AgentTokenSecretName), Action: "delete", Summary: "the agent token"})
		if err := u.w.Delete(ctx, Secrets(member, kubesphere.Namespace), kubesphere.AgentTokenSecretName, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("member: delete secret %s/%s: %w", kubesphere.Namespace, kubesphere.AgentTokenSecretName, err)
		}
	}
	u.res.LeftBehind = append(u.res.LeftBehind,
		"the member's ClusterConfiguration keeps clusterRole: member and the host's jwtSecret (KubeSphere does not support switching roles back; "+
			"to re-join, run join again; to use it alone, set multicluster.clusterRole: none and a new authentication.jwtSecret in its ClusterConfiguration)")
	return nil
}

// waitClusterGone waits for KubeSphere to finish deleting the Cluster (finalizer). With Force, a
// finalizer that is still there after the wait is removed and what it would have cleaned is reported.
func (u *Unjoiner) waitClusterGone(ctx context.Context, name string) error {
	host, opts, rep := u.host, u.opts, u.rep
	wait := opts.Timeout
	if opts.Force && wait > 30*time.Second {
		wait = 30 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		c, err := GetCluster(ctx, host, name)
		if err != nil {
			return fmt.Errorf("host: %w", err)
		}
		if c == nil {
			rep.Step(fmt.Sprintf("host: Cluster %s deleted", name))
			return nil
		}
		rep.Progress(fmt.Sprintf("waiting for KubeSphere to finish deleting Cluster %s (finalizers %v)", name, c.GetFinalizers()))
		if time.Now().After(deadline) {
			if !opts.Force {
				return u.stuckError(ctx, name, wait, c.GetFinalizers())
			}
			return u.forceFinalizers(ctx, name, c.GetFinalizers())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(opts.PollInterval):
		}
	}
}

// stuckError explains a Cluster that KubeSphere did not finish deleting.
func (u *Unjoiner) stuckError(ctx context.Context, name string, wait time.Duration, finalizers []string) error {
	// Is it KubeSphere 3.4's webhook? A server-side dry run of the finalizer removal goes through
	// it and changes nothing.
	if err := removeFinalizers(ctx, u.host, name, DryRunServer); err != nil && IsClusterWebhookRefusal(err) {
		return fmt.Errorf("timed out after %s waiting for Cluster %s to be deleted (finalizers %v): KubeSphere 3.4's validating webhook %s refuses every update "+
			"of the Cluster, ks-controller-manager's finalizer removal included, while it cannot reach the member through the Cluster's kubeconfig (%v); "+
			"make the member reachable (its agent connected), or, if the member is gone for good, re-run with --force",
			wait, name, finalizers, ClusterWebhookName, webhookReason(err))
	}
	return fmt.Errorf("timed out after %s waiting for Cluster %s to be deleted (finalizers %v): ks-controller-manager on the host could not finish; "+
		"see kubectl -n kubesphere-system logs deployment/ks-controller-manager%s, or re-run with --force to remove the finalizer",
		wait, name, finalizers, u.host.contextFlag())
}

// forceFinalizers is --force after the wait: the finalizer is removed (past KubeSphere's webhook
// when it refuses) and what it would have cleaned is reported.
func (u *Unjoiner) forceFinalizers(ctx context.Context, name string, finalizers []string) error {
	u.log.Record(Change{Object: "host Cluster " + name, Action: "remove finalizers", Summary: fmt.Sprintf("%v (--force)", finalizers)})
	if err := removeFinalizers(ctx, u.host, name, DryRunNone); err != nil {
		if !IsClusterWebhookRefusal(err) {
			return fmt.Errorf("host: remove finalizers of Cluster %s: %w", name, err)
		}
		if err := u.removeFinalizersPastWebhook(ctx, name, err); err != nil {
			return err
		}
	}
	u.res.LeftBehind = append(u.res.LeftBehind, "on the host: what KubeSphere's finalizer would have cleaned for Cluster "+name+
		" (kubefed registration, Service kubesphere-system/mc-"+name+" when the proxy does not remove it)")
	return nil
}

// KubeSphere 3.4's validating webhook on Cluster UPDATE (ks-installer v3.4.1
// roles/ks-core/ks-core/files/ks-core/templates/webhook.yaml; rule in kubesphere v3.4.1
// pkg/controller/cluster/cluster_webhook.go): once status.uid is set it admits an update only
// after reaching the member's kube-system through the Cluster's kubeconfig. It exempts nothing:
// not a finalizer removal, not a Terminating Cluster.
const (
	ClusterWebhookConfigName = "cluster.kubesphere.io"
	ClusterWebhookName       = "validating-cluster.kubesphere.io"
)

// IsClusterWebhookRefusal reports whether err is KubeSphere's Cluster webhook refusing an update
// (denied, or not callable: failurePolicy Fail).
func IsClusterWebhookRefusal(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, `admission webhook "`+ClusterWebhookName+`" denied`) ||
		strings.Contains(msg, `failed calling webhook "`+ClusterWebhookName+`"`)
}

// webhookReason is the part of a refusal after "denied the request: ".
func webhookReason(err error) string {
	msg := err.Error()
	if _, after, ok := strings.Cut(msg, "denied the request: "); ok {
		return after
	}
	return msg
}

// removeFinalizers sends {"metadata":{"finalizers":null}} to the Cluster; dry says whether it is
// a real removal (DryRunNone) or KubeSphere's webhook is only asked (DryRunServer).
func removeFinalizers(ctx context.Context, host *Clients, name string, dry DryRun) error {
	p := MergePatch{}
	p.Set(nil, "metadata", "finalizers")
	_, err := Writer{DryRun: dry}.MergePatch(ctx, DynamicResource(host, kubesphere.ClusterGVR, ""), name, p)
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// removeFinalizersPastWebhook is --force for a member that is gone: KubeSphere 3.4 admits no
// update of its Cluster any more, so the one object that stands in the way, the
// ValidatingWebhookConfiguration cluster.kubesphere.io, is deleted for the finalizer removal and
// re-created from its copy right after. Both steps are reported; if the re-creation fails, the
// error says how to restore it from the copy written to a file.
func (u *Unjoiner) removeFinalizersPastWebhook(ctx context.Context, name string, refusal error) error {
	host, rep := u.host, u.rep
	api := host.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	vwc, err := api.Get(ctx, ClusterWebhookConfigName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("host: remove finalizers of Cluster %s: %w; and get ValidatingWebhookConfiguration %s: %v", name, refusal, ClusterWebhookConfigName, err)
	}
	saved := vwc.DeepCopy()
	saved.ObjectMeta = metav1.ObjectMeta{Name: vwc.Name, Labels: vwc.Labels, Annotations: vwc.Annotations}
	saved.TypeMeta = metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingWebhookConfiguration"}
	backup, err := writeBackup(saved)
	if err != nil {
		return fmt.Errorf("host: save a copy of ValidatingWebhookConfiguration %s before suspending it: %w", ClusterWebhookConfigName, err)
	}
	rep.Warn(fmt.Sprintf("KubeSphere 3.4's webhook %s refuses every update of Cluster %s while it cannot reach the member (%s): "+
		"--force suspends ValidatingWebhookConfiguration %s for this one finalizer removal and re-creates it at once (copy: %s)",
		ClusterWebhookName, name, webhookReason(refusal), ClusterWebhookConfigName, backup))
	u.log.Record(Change{Object: "host ValidatingWebhookConfiguration " + ClusterWebhookConfigName, Action: "delete",
		Summary: "KubeSphere's Cluster webhook, suspended for the finalizer removal of Cluster " + name + " (--force; re-created next)"})
	uid := vwc.UID
	if err := u.w.Delete(ctx, TypedResource(api), vwc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil {
		return fmt.Errorf("host: delete ValidatingWebhookConfiguration %s: %w", ClusterWebhookConfigName, err)
	}
	patchErr := removeFinalizers(ctx, host, name, DryRunNone)
	restore := func() error {
		var err error
		for i := 0; i < 5; i++ {
			err = u.w.Send(func(dryRun []string) error {
				_, err := api.Create(ctx, saved, metav1.CreateOptions{FieldManager: kubesphere.FieldManager, DryRun: dryRun})
				return err
			})
			if err == nil || apierrors.IsAlreadyExists(err) {
				return nil
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(time.Second):
			}
		}
		return err
	}
	if err := restore(); err != nil {
		return fmt.Errorf("host: re-create ValidatingWebhookConfiguration %s: %w\nKubeSphere's Cluster webhook is OFF: restore it with kubectl%s apply -f %s",
			ClusterWebhookConfigName, err, host.contextFlag(), backup)
	}
	u.log.Record(Change{Object: "host ValidatingWebhookConfiguration " + ClusterWebhookConfigName, Action: "create", Summary: "KubeSphere's Cluster webhook, restored as it was"})
	_ = os.Remove(backup)
	if patchErr != nil {
		return fmt.Errorf("host: remove finalizers of Cluster %s: %w", name, patchErr)
	}
	return nil
}

// writeBackup writes obj as YAML to a private temp file and returns its path.
func writeBackup(obj any) (string, error) {
	b, err := yaml.Marshal(obj)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp("", "ks-mc-"+ClusterWebhookConfigName+"-*.yaml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return "", err
	}
	return f.Name(), f.Close()
}
