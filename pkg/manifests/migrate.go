package manifests

import (
	"strings"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Names for a member moved from KubeSphere's Tower agent to the ks-mc agent by "kubectl ks-mc
// migrate": the ks-mc agent runs NEXT TO the Tower agent until its session serves, so it needs a
// Deployment of its own, with a selector that does not overlap the Tower agent's (app: agent,
// app.kubernetes.io/part-of: tower), or each Deployment would count the other's pods.
const (
	// MigratedAgentName is the ks-mc agent Deployment of a migrated member.
	MigratedAgentName = "ks-mc-agent"

	// AgentProtocolAnnotation on a Cluster says which agent protocol its member runs: value
	// AgentProtocolKsMc once the member runs the ks-mc agent (join --tunnel=ks-mc, migrate). The
	// ks-mc proxy serves Tower agents only for Clusters without that value (downgrade protection),
	// and writes the connected protocol into the heartbeat Lease under the same key
	// (AgentProtocolKsMc or AgentProtocolTower).
	// TODO(contract): move to pkg/kubesphere once it exists.
	AgentProtocolAnnotation = "ks-mc.io/agent-protocol"
	AgentProtocolKsMc       = "ks-mc"
	AgentProtocolTower      = "tower"

	// AgentDeploymentAnnotation on a Cluster names the member's agent Deployment when it is not
	// kubesphere.AgentName (MigratedAgentName after migrate), so that render, join and unjoin find it from the
	// host alone.
	AgentDeploymentAnnotation = "ks-mc.io/agent-deployment"
)

// MigratedAgentSelector are the pod labels of the migrated ks-mc agent (disjoint from AgentSelector).
func MigratedAgentSelector() map[string]string {
	return map[string]string{"app": MigratedAgentName, "app.kubernetes.io/part-of": "ks-mc"}
}

// AgentNames are the names an agent Deployment of a member may have, the usual one first.
func AgentNames() []string { return []string{kubesphere.AgentName, MigratedAgentName} }

// AgentSelectorFor returns the pod selector of the agent Deployment named name.
func AgentSelectorFor(name string) map[string]string {
	if name == MigratedAgentName {
		return MigratedAgentSelector()
	}
	return AgentSelector()
}

// ProxyTowerAgentsArg is the ks-mc proxy's flag saying whether it serves Tower agents (values
// auto, the default, and never).
const ProxyTowerAgentsArg = "--tower-agents"

// ProxyTowerAgents reads --tower-agents from a rendered proxy Deployment ("auto" when absent).
func ProxyTowerAgents(d *appsv1.Deployment) string {
	v := "auto"
	if d == nil || !IsProxyDeployment(d) {
		return v
	}
	args := d.Spec.Template.Spec.Containers[0].Args
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, ProxyTowerAgentsArg+"="):
			v = strings.TrimPrefix(a, ProxyTowerAgentsArg+"=")
		case a == ProxyTowerAgentsArg && i+1 < len(args):
			v = args[i+1]
		}
	}
	return v
}
