package kube

import "github.com/ks-mc/ks-mc/pkg/kubesphere"

// TowerAgentAllowed implements TowerPolicy from the informer cache: Tower agents are served for a
// Cluster unless it carries kubesphere.AgentProtocolAnnotation=ks-mc (set by "join --tunnel=ks-mc"
// and by "migrate" once the ks-mc agent serves), so that nobody holding the Cluster's token can
// bring a migrated member back onto the weaker protocol. A Cluster the cache does not hold is
// allowed here: its agents are refused by the token check.
func (c *Controller) TowerAgentAllowed(cluster string) bool {
	u, _, err := c.cluster(cluster)
	if err != nil || u == nil {
		return true
	}
	return u.GetAnnotations()[kubesphere.AgentProtocolAnnotation] != string(kubesphere.TunnelKsMc)
}
