package kubesphere

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
)

// The ks-mc proxy's CA: a Secret in the proxy's namespace that the proxy creates on first start,
// and the pin agents check ("kubectl ks-mc join" reads it; the agent's --ca-cert-hash).
const (
	// CASecretName is the CA Secret in the proxy's namespace (the proxy's --ca-secret default).
	CASecretName = "ks-mc-proxy-ca"
	// CAHashAnnotation on the CA Secret holds "sha256:<hex>" for agents' --ca-cert-hash.
	CAHashAnnotation = "ks-mc.io/ca-cert-hash"
)

// CACertHash returns the kubeadm-style pin of a CA: "sha256:" + hex(SHA-256 of its
// SubjectPublicKeyInfo).
func CACertHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// The proxy's per-cluster heartbeat: a coordination.k8s.io Lease kubesphere-system/ks-mc-tunnel-<cluster>
// that the proxy renews while it holds agent sessions of that cluster, after a round trip (a yamux
// ping) through each of them. "kubectl ks-mc diagnose" reads it (get leases) to tell a live tunnel
// from a stale AgentAvailable/Ready condition without reaching the proxy's pod network, and without
// writing the Cluster (KubeSphere 3.4's Cluster webhook stays out of the way).
const (
	HeartbeatLeasePrefix = "ks-mc-tunnel-"
	// HeartbeatClusterLabel names the Cluster on the Lease.
	HeartbeatClusterLabel = "tunnel.ks-mc.io/cluster"
	// HeartbeatAgentsAnnotation is the number of agent sessions that answered the ping.
	HeartbeatAgentsAnnotation = "tunnel.ks-mc.io/agents"
	// HeartbeatRTTAnnotation is the slowest ping round trip (Go duration).
	HeartbeatRTTAnnotation = "tunnel.ks-mc.io/rtt"
	// HeartbeatErrorAnnotation is why sessions did not answer (no secret: yamux errors only).
	HeartbeatErrorAnnotation = "tunnel.ks-mc.io/error"
)

// HeartbeatLeaseName is the Lease of cluster.
func HeartbeatLeaseName(cluster string) string { return HeartbeatLeasePrefix + cluster }
