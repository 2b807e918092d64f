package kubesphere

// Names of a member moved from KubeSphere's Tower agent to the ks-mc agent by "kubectl ks-mc
// migrate" (ks-mc's own, not KubeSphere's): the ks-mc agent runs NEXT TO the Tower agent
// (AgentName) until its session serves, so it has a Deployment of its own, with pod labels
// disjoint from the Tower agent's (app: agent, app.kubernetes.io/part-of: tower).
const (
	// MigratedAgentName is the ks-mc agent Deployment of a migrated member.
	MigratedAgentName = "ks-mc-agent"
	// AgentDeploymentAnnotation on a Cluster names its member's agent Deployment when it is not
	// AgentName (MigratedAgentName after migrate), so that render, join and unjoin know it from the
	// host alone.
	AgentDeploymentAnnotation = "ks-mc.io/agent-deployment"
)
