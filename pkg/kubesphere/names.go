package kubesphere

// Names of the KubeSphere objects ks-mc reads and patches (ks-installer's roles/ks-core and
// roles/multicluster templates).
const (
	// Namespace holds every KubeSphere object ks-mc touches, on host and member alike.
	Namespace = "kubesphere-system"
	// ClusterConfigurationName is the ks-installer ClusterConfiguration.
	ClusterConfigurationName = "ks-installer"
	// ConfigName is the ConfigMap ks-apiserver reads; ConfigKey is its data key.
	ConfigName = "kubesphere-config"
	ConfigKey  = "kubesphere.yaml"
	// InstallerSelector selects the ks-installer pod.
	InstallerSelector = "app=ks-installer"
	// APIServerName is the ks-apiserver Deployment.
	APIServerName = "ks-apiserver"
	// TowerName is the Deployment and Service of the multi-cluster proxy on a host (Tower, or the
	// ks-mc proxy in its place).
	TowerName = "tower"
	// ServiceAccount runs the tower Deployment on a host and the cluster-agent on a member.
	ServiceAccount = "kubesphere"
	// AgentName is the agent Deployment on a member (the same for both tunnels, so switching tunnels
	// replaces the Deployment instead of running two agents).
	AgentName = "cluster-agent"
	// DefaultAgentImage is the Tower agent image of KubeSphere 3.4 (multicluster.agentImage default).
	DefaultAgentImage = "kubesphere/tower:v0.2.1"
)

// Cluster roles of the ClusterConfiguration's spec.multicluster.clusterRole.
const (
	RoleHost   = "host"
	RoleMember = "member"
	RoleNone   = "none"
)

// Names ks-mc adds to the objects it writes.
const (
	// FieldManager is ks-mc's field manager for patches, updates and server-side apply.
	FieldManager = "ks-mc"
	// ManagedByLabel = ManagedByValue marks objects ks-mc created.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "ks-mc"
	// AgentTokenSecretName holds the bundled agent's token on a member (key AgentTokenSecretKey).
	AgentTokenSecretName = "cluster-agent-token"
	AgentTokenSecretKey  = "token"
)
