package installer

import (
	"context"
	"errors"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// ClusterRow is one Cluster of a host, as "kubectl ks-mc status" shows it.
type ClusterRow struct {
	Name string `json:"name"`
	// Role is host (the host's own Cluster) or member.
	Role       string `json:"role"`
	Connection string `json:"connection"`
	// Agent is Connected/Disconnected from AgentAvailable ("-" for a direct connection).
	Agent             string `json:"agent"`
	Ready             string `json:"ready"`
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	KubeSphereVersion string `json:"kubesphereVersion,omitempty"`
	Nodes             int64  `json:"nodes"`
	// LastTransition is the latest lastTransitionTime of the conditions (RFC 3339).
	LastTransition string `json:"lastTransition,omitempty"`
	// Message explains a Ready condition that is not True.
	Message string `json:"message,omitempty"`
	// Live is the live tunnel probe (status --probe): live, down or unknown; "" when not probed or
	// not a proxy connection.
	Live string `json:"live,omitempty"`
	// LiveEvidence is what the probe saw; LatencyMS its measured round trip.
	LiveEvidence []string                      `json:"liveEvidence,omitempty"`
	LatencyMS    *float64                      `json:"latencyMs,omitempty"`
	UID          string                        `json:"uid,omitempty"`
	Conditions   []kubesphere.ClusterCondition `json:"conditions,omitempty"`
	// Protocol is the agent protocol the member connects with (tower or ks-mc), from the ks-mc
	// proxy's heartbeat Lease (else: tower when the host runs KubeSphere's Tower); "" unknown.
	Protocol string `json:"protocol,omitempty"`
	// Weaker explains why a member on a Tower agent is less protected, with the migrate command.
	Weaker string `json:"weaker,omitempty"`
}

// ContextRole is the KubeSphere role of one kubeconfig context.
type ContextRole struct {
	Context           string `json:"context"`
	Role              string `json:"role,omitempty"`
	KubeSphereVersion string `json:"kubesphereVersion,omitempty"`
	// Cluster is this context's Cluster name on the host (matched by kube-system UID).
	Cluster string `json:"cluster,omitempty"`
	Error   string `json:"error,omitempty"`
}

// StatusReport is the fleet as the host sees it plus the roles of the given contexts.
type StatusReport struct {
	Host     string        `json:"host,omitempty"`
	Clusters []ClusterRow  `json:"clusters"`
	Contexts []ContextRole `json:"contexts"`
}

// ClusterRowOf summarises a Cluster object.
func ClusterRowOf(c *unstructured.Unstructured) ClusterRow {
	row := ClusterRow{Name: c.GetName(), Role: kubesphere.RoleMember, Agent: "-", Ready: "Unknown"}
	if IsHostCluster(c) {
		row.Role = kubesphere.RoleHost
	}
	row.Connection, _, _ = unstructured.NestedString(c.Object, "spec", "connection", "type")
	row.KubernetesVersion, _, _ = unstructured.NestedString(c.Object, "status", "kubernetesVersion")
	row.KubeSphereVersion, _, _ = unstructured.NestedString(c.Object, "status", "kubeSphereVersion")
	row.UID = ClusterMemberUID(c)
	if n, ok, _ := unstructured.NestedFieldNoCopy(c.Object, "status", "nodeCount"); ok {
		if f, ok := toFloat(n); ok {
			row.Nodes = int64(f)
		}
	}
	row.Conditions = ClusterConditions(c)
	if row.Connection == "proxy" {
		row.Agent = "Disconnected"
		if conditionTrue(row.Conditions, kubesphere.ConditionAgentAvailable) {
			row.Agent = "Connected"
		}
	}
	if r := FindCondition(row.Conditions, kubesphere.ConditionReady); r != nil {
		row.Ready = r.Status
		if r.Status != "True" {
			row.Message = r.Message
		}
	}
	for _, cond := range row.Conditions {
		if cond.LastTransitionTime > row.LastTransition {
			row.LastTransition = cond.LastTransitionTime
		}
	}
	return row
}

// Status lists the host's Clusters and the roles of the given contexts (host may be nil when only
// roles are wanted). A context that cannot be read is reported in its row, not as an error.
func Status(ctx context.Context, host *Clients, contexts []*Clients) (*StatusReport, error) {
	rep := &StatusReport{Clusters: []ClusterRow{}, Contexts: []ContextRole{}}
	byUID := map[string]string{}
	if host != nil {
		rep.Host = host.Context
		clusters, err := ListClusters(ctx, host)
		if err != nil {
			return nil, err
		}
		protocols := AgentProtocols(ctx, host, clusters)
		hostTunnel, _ := HostTunnel(ctx, host)
		for i := range clusters {
			row := ClusterRowOf(&clusters[i])
			if row.Connection == kubesphere.ConnectionTypeProxy && row.Role != kubesphere.RoleHost {
				row.Protocol = protocols[row.Name]
				if row.Protocol == string(kubesphere.TunnelTower) {
					row.Weaker = TowerAgentWeakness(host, row.Name, hostTunnel == kubesphere.TunnelTower)
				}
			}
			rep.Clusters = append(rep.Clusters, row)
			if row.UID != "" {
				byUID[row.UID] = row.Name
			}
		}
		sort.Slice(rep.Clusters, func(a, b int) bool {
			ra, rb := rep.Clusters[a], rep.Clusters[b]
			if (ra.Role == kubesphere.RoleHost) != (rb.Role == kubesphere.RoleHost) {
				return ra.Role == kubesphere.RoleHost
			}
			return ra.Name < rb.Name
		})
	}
	for _, c := range contexts {
		if c == nil {
			continue
		}
		cr := ContextRole{Context: c.Context}
		cc, err := GetClusterConfiguration(ctx, c)
		switch {
		case errors.Is(err, ErrKubeSphereNotInstalled):
			cr.Role = "no KubeSphere"
		case err != nil:
			cr.Error = err.Error()
		default:
			cr.Role = cc.ClusterRole()
			cr.KubeSphereVersion = cc.Version()
		}
		if err == nil || errors.Is(err, ErrKubeSphereNotInstalled) {
			if uid, err := KubeSystemUID(ctx, c); err == nil {
				cr.Cluster = byUID[uid]
			}
		}
		rep.Contexts = append(rep.Contexts, cr)
	}
	return rep, nil
}

// Values of ClusterRow.Live.
const (
	LiveUp      = "live"
	LiveDown    = "down"
	LiveUnknown = "unknown"
)

// ProbeTunnels runs the live tunnel check of diagnose (heartbeat, agent pods through the given
// member contexts, the service proxy) for every proxy Cluster and fills Live in rep's rows.
func ProbeTunnels(ctx context.Context, host *Clients, members []*Clients, rep *StatusReport, timeout time.Duration) error {
	var ms []*Clients
	for _, m := range members {
		if m != nil && m != host {
			ms = append(ms, m)
		}
	}
	d, _, err := Diagnose(ctx, DiagnoseOptions{Host: host, Members: ms, Timeout: timeout, TunnelOnly: true})
	if err != nil {
		return err
	}
	for i := range rep.Clusters {
		row := &rep.Clusters[i]
		fs := d.Find(CheckClusterTunnel, "cluster/"+row.Name)
		if len(fs) == 0 {
			continue
		}
		f := fs[0]
		switch f.Status {
		case DiagOK:
			row.Live = LiveUp
		case DiagFail:
			row.Live = LiveDown
		default:
			row.Live = LiveUnknown
		}
		row.LiveEvidence = append([]string{f.Summary}, f.Evidence...)
		row.LatencyMS = f.LatencyMS
	}
	return nil
}

// AgentProtocols tells, per Cluster name, which agent protocol its member connects with: what the
// ks-mc proxy's heartbeat Lease says (annotation ks-mc.io/agent-protocol); without one, tower when
// the host runs KubeSphere's Tower (every agent is a Tower agent then), ks-mc for a Cluster
// annotated ks-mc (the proxy refuses Tower agents for it); else nothing is known.
func AgentProtocols(ctx context.Context, host *Clients, clusters []unstructured.Unstructured) map[string]string {
	out := map[string]string{}
	tunnelKind, _ := HostTunnel(ctx, host)
	leases := map[string]string{}
	if tunnelKind == kubesphere.TunnelKsMc {
		if l, err := host.Kube.CoordinationV1().Leases(kubesphere.Namespace).List(ctx, metav1.ListOptions{LabelSelector: kubesphere.HeartbeatClusterLabel}); err == nil {
			for i := range l.Items {
				if p := LeaseProtocol(&l.Items[i]); p != "" {
					leases[l.Items[i].Labels[kubesphere.HeartbeatClusterLabel]] = p
				}
			}
		}
	}
	for i := range clusters {
		c := &clusters[i]
		name := c.GetName()
		switch {
		case tunnelKind == kubesphere.TunnelTower:
			out[name] = string(kubesphere.TunnelTower)
		case leases[name] != "":
			out[name] = leases[name]
		case c.GetAnnotations()[kubesphere.AgentProtocolAnnotation] == string(kubesphere.TunnelKsMc):
			out[name] = string(kubesphere.TunnelKsMc)
		}
	}
	return out
}

// TowerAgentWeakness says what a member on a Tower agent cannot be protected from, and how to
// move it to the ks-mc agent; hostTower: the host still runs KubeSphere's Tower (switch it first).
func TowerAgentWeakness(host *Clients, cluster string, hostTower bool) string {
	h := "HOST"
	if host != nil && host.Context != "" {
		h = host.Context
	}
	first := ""
	if hostTower {
		first = "kubectl ks-mc init-host --context " + h + " --tunnel=ks-mc (Tower members stay connected), then "
	}
	return "on a Tower agent: weaker than the ks-mc agent (its token is in the agent's command line, and over ws:// the proxy is not authenticated, so anyone on the path can take the token); " +
		"move it: " + first + "kubectl ks-mc migrate --host-context " + h + " --context <context of " + cluster + ">"
}
