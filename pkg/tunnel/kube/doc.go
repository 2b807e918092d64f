// Package kube is the Kubernetes side of ks-mc's tunnel (pkg/tunnel is the wire side and imports
// no Kubernetes package; kube imports it, never the reverse).
//
// On the host it watches KubeSphere's Clusters and does what Tower does for them (ports, token,
// Service mc-<name>, the kubeconfig, the conditions), authenticates agents against them, keeps the
// proxy CA in a Secret, renews the per-cluster heartbeat Leases, and runs the proxy process with
// standby and leader election (RunProxy). On the member it builds the agent's transports to the
// kube-apiserver from a rest.Config (AgentUpstream, NewAgent). Logs go through klog, so --v and
// --vmodule apply; the wire side gets klog's logger handed in.
//
// Files:
//
//	run.go          RunProxy, ProxyOptions: CA, Controller, proxy, heartbeat, standby, leader election
//	controller.go   Controller: the Cluster informer, authentication, per-cluster listeners
//	reconcile.go    the reconcile of one Cluster (ports, token, Service, kubeconfig, conditions)
//	ca.go           LoadOrCreateCA: the proxy CA in its Secret
//	cluster.go      the Cluster type and its conditions
//	heartbeat.go    Heartbeat: the per-cluster Leases "kubectl ks-mc diagnose" reads
//	upstream.go     AgentUpstream, NewAgent: the agent's kube-apiserver transports from a rest.Config
package kube
