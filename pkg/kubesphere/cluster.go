package kubesphere

// Labels and annotations of a Cluster (KubeSphere's own, plus ks-mc's member link).
const (
	ClusterGroupLabel     = "cluster.kubesphere.io/group"
	ClusterRegionLabel    = "cluster.kubesphere.io/region"
	ClusterHostRoleLabel  = "cluster-role.kubesphere.io/host"
	DescriptionAnnotation = "kubesphere.io/description"
	CreatorAnnotation     = "kubesphere.io/creator"
	// MemberUIDAnnotation records the member's kube-system UID when ks-mc creates the Cluster, so a
	// re-run can adopt it before KubeSphere has filled status.uid.
	MemberUIDAnnotation = "ks-mc.io/member-uid"
	// AgentProtocolAnnotation = "ks-mc" (string(TunnelKsMc)) on a Cluster whose member runs the ks-mc
	// agent; on the heartbeat Lease it names the protocol of the connected session ("ks-mc" or "tower").
	AgentProtocolAnnotation = "ks-mc.io/agent-protocol"
)

// MaxClusterNameLength: the proxy creates Service ServicePrefix+<name>, a 63-character DNS label.
const MaxClusterNameLength = 60

// ServicePrefix + cluster name is the per-cluster Service the proxy creates on the host (Tower's
// naming, kubesphere/tower v0.2.1 pkg/proxy).
const ServicePrefix = "mc-"

// ConnectionTypeProxy is spec.connection.type of a Cluster reached through the tunnel.
const ConnectionTypeProxy = "proxy"

// Condition types of a Cluster's status.conditions (kubesphere/kubesphere v3.4.1
// pkg/apis/cluster/v1alpha1/cluster_types.go).
const (
	ConditionInitialized    = "Initialized"
	ConditionAgentAvailable = "AgentAvailable"
	ConditionFederated      = "Federated"
	ConditionReady          = "Ready"
)

// Condition messages the proxy writes, Tower's words (kubesphere/tower v0.2.1 pkg/proxy).
const (
	MessageAgentConnected    = "Agent has connected to proxy successfully."
	MessageAgentDisconnected = "Agent has not connected to proxy."
	MessageInitialized       = "Cluster has been initialized"
)

// ClusterCondition is one entry of a Cluster's status.conditions.
type ClusterCondition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
	LastTransitionTime string `json:"lastTransitionTime,omitempty"`
}
