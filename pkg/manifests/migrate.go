package manifests

import (
	"strings"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// The agent Deployment of a migrated member is kubesphere.MigratedAgentName (next to the Tower
// agent while migrate runs; its own selector, or each Deployment would count the other's pods).

// MigratedAgentSelector are the pod labels of the migrated ks-mc agent (disjoint from AgentSelector).
func MigratedAgentSelector() map[string]string {
	return map[string]string{"app": kubesphere.MigratedAgentName, "app.kubernetes.io/part-of": "ks-mc"}
}

// AgentNames are the names an agent Deployment of a member may have, the usual one first.
func AgentNames() []string { return []string{kubesphere.AgentName, kubesphere.MigratedAgentName} }

// AgentSelectorFor returns the pod selector of the agent Deployment named name.
func AgentSelectorFor(name string) map[string]string {
	if name == kubesphere.MigratedAgentName {
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
