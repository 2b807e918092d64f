// Package kubesphere holds the contract between ks-mc and KubeSphere 3.x / Tower: the names of the
// objects ks-mc reads and writes (namespace, ClusterConfiguration, kubesphere-config, the tower
// Deployment and Service, the member's cluster-agent), the resources (GVRs), the Cluster's labels,
// annotations and conditions, the tunnel kinds, and the names ks-mc itself adds to that contract (field
// manager, managed-by label, the proxy's CA Secret and pin, the heartbeat Leases).
//
// It is a leaf: it imports only the standard library, no ks-mc package and no Kubernetes module, so
// pkg/installer, pkg/manifests, pkg/tunnel (whose wire code needs no Kubernetes) and the tests stand
// side by side on it instead of importing each other for names. It holds names and pure functions
// over them; no clients, no I/O.
//
// test/sandbox/fakeks, the stand-in that implements KubeSphere's side, keeps its own copies of
// KubeSphere's names (cited from KubeSphere's source), so that a wrong name here is caught by the
// tests instead of being shared with the stand-in.
package kubesphere
