// Package tunnel is the runtime of ks-mc's bundled reverse tunnel, the replacement for
// KubeSphere's Tower: the agent (member side) dials out to the proxy (host side) over TLS, upgrades
// the HTTP/1.1 connection and runs a yamux session on it; the proxy opens one stream per client
// connection to the member's kube-apiserver or ks-apiserver. spec.md describes the wire format.
//
// This package is the wire code: it needs no Kubernetes and imports no k8s.io package (names of
// the contract come from pkg/kubesphere, which imports only the standard library). Logs go to the
// logr.Logger its callers hand in (klog's, from the Kubernetes side). The Kubernetes side lives in
// pkg/tunnel/kube: the Controller over the Clusters, the heartbeat Leases, the CA Secret, the
// agent's kube-apiserver transports from a rest.Config, and the proxy process (kube.RunProxy).
// kube imports this package, never the reverse; hack/deps_test.go enforces it.
//
// Files, one concern each:
//
//	config.go      Config, DefaultConfig, Validate (session tuning shared by both sides)
//	errors.go      sentinel errors
//	protocol.go    upgrade constants, stream header and answer, splice helpers, frame coalescing
//	backoff.go     full-jitter exponential backoff
//	agent.go       Agent: TLS pin, upgrade, reconnect, serve streams, drain
//	dial.go        the agent's dial (HTTP CONNECT proxies); connListener (Tower sessions, the kube
//	               listener's http.Server, tests)
//	agent_serve.go the agent's stream server: keep-alive loop, forwarding, drain registry
//	agent_long.go  its long-lived responses: watches (the stream watched for the caller leaving), upgrades
//	agent_http.go  its request reading (header cap) and response writing, the upstream rewrite
//	httpwire.go    the HTTP/1.1 pieces both ends of a stream share (hop-by-hop headers, validation)
//	pin.go         kubeadm-style CA pinning (sha256 of the SubjectPublicKeyInfo)
//	forward.go     the agent's upstreams (credential choice: kubeTransport), KubeUpstream (the
//	               transports, built by kube.AgentUpstream), the Tower sessions' forwarder
//	proxy.go       Proxy: the proxy port (health, version, metrics, agent endpoint), DialStream
//	auth.go        Authenticator, StaticAuthenticator, TokenEqual
//	server.go      RunProxy, ServerOptions: a proxy process (port, TLS, metrics, drain order)
//	registry.go    connected agents per cluster (several per cluster, round robin, one mutex)
//	revoke.go      Revalidate: close sessions whose token or identity no longer authenticates
//	ping.go        PingAgents, ConnectedClusters (for kube.Heartbeat)
//	ratelimit.go   rate limit of failed agent authentications
//	listener.go    per-cluster listeners (kube TLS with client certificates, ks plain HTTP)
//	listener_client.go the kube listener's own HTTP/1.1 client over tunnel streams (upgrades excepted)
//	listener_request.go its request writing (head, framing, body)
//	listener_pool.go   its pool of idle streams (reuse check, idle sweep)
//	listener_relay.go  the kube listener's TLS handshake and its HTTP/2 clients, relayed whole
//	relay_h2.go    the agent's HTTP/2 relay: header blocks decoded and encoded again, credentials
//	relay_h2_frames.go its frames: the server's direction, the agent's own frames, flow control
//	proxy_relay.go data connections: a relayed client on a connection of its own (DialRelay)
//	tlsbatch.go    one socket write per large TLS write; reading ahead by whole records
//	rawio_linux.go their TCP reads and writes as raw system calls (no sysmon wake-ups)
//	certs.go       per-installation CA, serving and client certificates, renewal
//	sniff.go       TLS and plain HTTP on one port
//	metrics.go     Prometheus text metrics
//
// # Several proxy replicas
//
// One proxy holds every agent session and every per-cluster listener; the Deployment runs one
// replica with the Recreate strategy, and --leader-elect (a Lease) makes extra replicas standbys
// that answer /health but refuse agents with 503, so agents keep retrying until they reach the
// leader. Sharing agents between active replicas would need (a) agents that connect to every
// replica (the agent would resolve the headless Service and keep one session per endpoint, the
// registry already serves several sessions per cluster), or (b) replicas that forward streams to
// the replica that holds the session (a Lease per cluster naming the holder's pod IP, and a
// replica-to-replica stream relay). (a) is the simpler path: the per-cluster listeners would run on
// every replica that holds a session and the mc-<name> Service would select them all; the
// Cluster's conditions would be written by the leader from the union of the replicas' sessions.
package tunnel
