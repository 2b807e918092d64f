package installer

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
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
func Unjoin(ctx context.Context, host, member *Clients, opts UnjoinOptions, rep Reporter) (*UnjoinResult, error) {
	rep = reporterOrNop(rep)
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Minute
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 2 * time.Second
	}
	res := &UnjoinResult{Name: opts.Name, Changes: []Change{}}
	if opts.DryRun.Enabled() {
		res.DryRun = opts.DryRun
	}
	change := func(obj, action, summary string) {
		res.Changes = append(res.Changes, Change{Object: obj, Action: action, Summary: summary})
		verb := action
		if opts.DryRun.Enabled() {
			verb = "would " + action
		}
		rep.Step(fmt.Sprintf("%s %s: %s", verb, obj, summary))
	}

	// The member's identity, when it is reachable.
	memberUID, memberErr := "", error(nil)
	if member != nil {
		memberUID, memberErr = KubeSystemUID(ctx, member)
	} else {
		memberErr = fmt.Errorf("no member context given")
	}
	if memberErr != nil && !opts.Force {
		return res, fmt.Errorf("member%s: %w\nto remove the Cluster from the host anyway (the member is gone), re-run with --force", member.contextFlag(), memberErr)
	}
	if memberErr != nil {
		rep.Warn(fmt.Sprintf("member unreachable (%v): --force, only the host side is cleaned up", memberErr))
	}

	// Find the Cluster.
	var cluster *unstructured.Unstructured
	var err error
	if opts.Name != "" {
		if err := manifests.ValidateClusterName(opts.Name); err != nil {
			return res, err
		}
		cluster, err = GetCluster(ctx, host, opts.Name)
		if err != nil {
			return res, fmt.Errorf("host: %w", err)
		}
	} else {
		if memberUID == "" {
			return res, fmt.Errorf("cannot find the Cluster without the member: pass --name")
		}
		clusters, err := ListClusters(ctx, host)
		if err != nil {
			return res, fmt.Errorf("host: %w", err)
		}
		for i := range clusters {
			if ClusterMemberUID(&clusters[i]) == memberUID && !IsHostCluster(&clusters[i]) {
				cluster = &clusters[i]
				break
			}
		}
	}
	if cluster != nil {
		res.Name = cluster.GetName()
		if IsHostCluster(cluster) {
			return res, fmt.Errorf("cluster %s is the host's own cluster: refusing to delete it", cluster.GetName())
		}
		if uid := ClusterMemberUID(cluster); uid != "" && memberUID != "" && uid != memberUID && !opts.Force {
			return res, fmt.Errorf("cluster %s belongs to another cluster (kube-system UID %s, the given member's is %s): check --name and --context (or --force to delete it anyway)",
				cluster.GetName(), uid, memberUID)
		}
	} else {
		rep.Step("host: no Cluster for this member (already removed)")
	}

	// The member's agent: only one that serves this Cluster (or this host's proxy).
	var agentInfo AgentInfo
	agentPresent := false
	// Every agent Deployment that serves this Cluster: cluster-agent and, on a member moved by
	// migrate (or stopped half-way), the ks-mc agent next to it.
	var agents []*appsv1.Deployment
	if memberErr == nil {
		ds, err := GetAgentDeployments(ctx, member)
		if err != nil {
			return res, fmt.Errorf("member: %w", err)
		}
		for _, d := range ds {
			info := InspectAgent(d)
			if res.Name == "" {
				res.Name = info.ClusterName
			}
			if res.Name != "" && info.ClusterName != "" && info.ClusterName != res.Name {
				rep.Warn(fmt.Sprintf("member: Deployment %s/%s serves cluster %q, not %q: left in place", manifests.AgentNamespace, d.Name, info.ClusterName, res.Name))
				continue
			}
			if !agentPresent {
				agentInfo = info
			}
			agentPresent = true
			agents = append(agents, d)
		}
	}

	// 1. The Cluster on the host, and wait until it is gone.
	if cluster != nil {
		obj := "host Cluster " + cluster.GetName()
		change(obj, "delete", "KubeSphere unregisters the member")
		if opts.DryRun != DryRunClient {
			err := host.Dynamic.Resource(manifests.ClusterGVR).Delete(ctx, cluster.GetName(), metav1.DeleteOptions{DryRun: opts.DryRun.apiDryRun()})
			if err != nil && !apierrors.IsNotFound(err) {
				return res, fmt.Errorf("delete Cluster %s on the host: %w", cluster.GetName(), err)
			}
		}
		if !opts.DryRun.Enabled() {
			if err := waitClusterGone(ctx, host, cluster.GetName(), opts, rep, change, res); err != nil {
				return res, err
			}
		}
	}

	// 2. The agent on the member.
	if memberErr == nil {
		for _, d := range agents {
			change(fmt.Sprintf("member deployment %s/%s", manifests.AgentNamespace, d.Name), "delete", fmt.Sprintf("the %s agent", InspectAgent(d).Tunnel))
			if opts.DryRun != DryRunClient {
				err := member.Kube.AppsV1().Deployments(manifests.AgentNamespace).Delete(ctx, d.Name, metav1.DeleteOptions{DryRun: opts.DryRun.apiDryRun()})
				if err != nil && !apierrors.IsNotFound(err) {
					return res, fmt.Errorf("member: delete deployment %s/%s: %w", manifests.AgentNamespace, d.Name, err)
				}
			}
		}
		sec, err := member.Kube.CoreV1().Secrets(manifests.AgentNamespace).Get(ctx, manifests.AgentTokenSecretName, metav1.GetOptions{})
		if err == nil && sec.Labels[manifests.ManagedByLabel] == manifests.ManagedByValue && (agentPresent || agentInfo.ClusterName == "") {
			change(fmt.Sprintf("member secret %s/%s", manifests.AgentNamespace, manifests.AgentTokenSecretName), "delete", "the agent token")
			if opts.DryRun != DryRunClient {
				err := member.Kube.CoreV1().Secrets(manifests.AgentNamespace).Delete(ctx, manifests.AgentTokenSecretName, metav1.DeleteOptions{DryRun: opts.DryRun.apiDryRun()})
				if err != nil && !apierrors.IsNotFound(err) {
					return res, fmt.Errorf("member: delete secret %s/%s: %w", manifests.AgentNamespace, manifests.AgentTokenSecretName, err)
				}
			}
		}
		res.LeftBehind = append(res.LeftBehind,
			"the member's ClusterConfiguration keeps clusterRole: member and the host's jwtSecret (KubeSphere does not support switching roles back; "+
				"to re-join, run join again; to use it alone, set multicluster.clusterRole: none and a new authentication.jwtSecret in its ClusterConfiguration)")
	} else {
		res.LeftBehind = append(res.LeftBehind,
			fmt.Sprintf("on the member (unreachable): Deployment %s/%s, Secret %s/%s (ks-mc agent only) and the member settings in its ClusterConfiguration; "+
				"if it comes back, delete them: kubectl -n %s delete deployment %s; kubectl -n %s delete secret %s --ignore-not-found",
				manifests.AgentNamespace, manifests.AgentName, manifests.AgentNamespace, manifests.AgentTokenSecretName,
				manifests.AgentNamespace, manifests.AgentName, manifests.AgentNamespace, manifests.AgentTokenSecretName))
	}
	res.Changed = len(res.Changes) > 0
	return res, nil
}

// waitClusterGone waits for KubeSphere to finish deleting the Cluster (finalizer). With Force, a
// finalizer that is still there after the wait is removed and what it would have cleaned is reported.
func waitClusterGone(ctx context.Context, host *Clients, name string, opts UnjoinOptions, rep Reporter,
	change func(obj, action, summary string), res *UnjoinResult) error {
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
				// Is it KubeSphere 3.4's webhook? A server-side dry run of the finalizer removal
				// goes through it and changes nothing.
				if err := removeFinalizersDryRun(ctx, host, name); err != nil && IsClusterWebhookRefusal(err) {
					return fmt.Errorf("timed out after %s waiting for Cluster %s to be deleted (finalizers %v): KubeSphere 3.4's validating webhook %s refuses every update "+
						"of the Cluster, ks-controller-manager's finalizer removal included, while it cannot reach the member through the Cluster's kubeconfig (%v); "+
						"make the member reachable (its agent connected), or, if the member is gone for good, re-run with --force",
						wait, name, c.GetFinalizers(), ClusterWebhookName, webhookReason(err))
				}
				return fmt.Errorf("timed out after %s waiting for Cluster %s to be deleted (finalizers %v): ks-controller-manager on the host could not finish; "+
					"see kubectl -n kubesphere-system logs deployment/ks-controller-manager%s, or re-run with --force to remove the finalizer",
					wait, name, c.GetFinalizers(), host.contextFlag())
			}
			change("host Cluster "+name, "remove finalizers", fmt.Sprintf("%v (--force)", c.GetFinalizers()))
			if err := removeFinalizers(ctx, host, name); err != nil {
				if !IsClusterWebhookRefusal(err) {
					return fmt.Errorf("host: remove finalizers of Cluster %s: %w", name, err)
				}
				if err := removeFinalizersPastWebhook(ctx, host, name, err, rep, change, res); err != nil {
					return err
				}
			}
			res.LeftBehind = append(res.LeftBehind, "on the host: what KubeSphere's finalizer would have cleaned for Cluster "+name+
				" (kubefed registration, Service kubesphere-system/mc-"+name+" when the proxy does not remove it)")
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(opts.PollInterval):
		}
	}
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

var finalizersNull = []byte(`{"metadata":{"finalizers":null}}`)

func removeFinalizers(ctx context.Context, host *Clients, name string) error {
	_, err := host.Dynamic.Resource(manifests.ClusterGVR).Patch(ctx, name, types.MergePatchType, finalizersNull, metav1.PatchOptions{FieldManager: FieldManager})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func removeFinalizersDryRun(ctx context.Context, host *Clients, name string) error {
	_, err := host.Dynamic.Resource(manifests.ClusterGVR).Patch(ctx, name, types.MergePatchType, finalizersNull,
		metav1.PatchOptions{FieldManager: FieldManager, DryRun: []string{metav1.DryRunAll}})
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
func removeFinalizersPastWebhook(ctx context.Context, host *Clients, name string, refusal error, rep Reporter,
	change func(obj, action, summary string), res *UnjoinResult) error {
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
	change("host ValidatingWebhookConfiguration "+ClusterWebhookConfigName, "delete",
		"KubeSphere's Cluster webhook, suspended for the finalizer removal of Cluster "+name+" (--force; re-created next)")
	uid := vwc.UID
	if err := api.Delete(ctx, vwc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("host: delete ValidatingWebhookConfiguration %s: %w", ClusterWebhookConfigName, err)
	}
	patchErr := removeFinalizers(ctx, host, name)
	restore := func() error {
		var err error
		for i := 0; i < 5; i++ {
			if _, err = api.Create(ctx, saved, metav1.CreateOptions{FieldManager: FieldManager}); err == nil || apierrors.IsAlreadyExists(err) {
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
	change("host ValidatingWebhookConfiguration "+ClusterWebhookConfigName, "create", "KubeSphere's Cluster webhook, restored as it was")
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
