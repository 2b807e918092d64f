package tunnel

import "errors"

// Sentinel errors. Callers match them with errors.Is; the wrapping error carries the detail
// (cluster name, address), never a token.
var (
	// ErrUnauthorized: the agent's token does not match the Cluster's spec.connection.token
	// (HTTP 401 on the upgrade endpoint).
	ErrUnauthorized = errors.New("tunnel: agent token rejected")

	// ErrUnknownCluster: no Cluster of that name is served by this proxy (it does not exist, or it
	// is not joinFederation=true with connection.type=proxy) (HTTP 403 on the upgrade endpoint).
	ErrUnknownCluster = errors.New("tunnel: unknown cluster")

	// ErrRateLimited: too many failed authentications from this address or for this cluster
	// (HTTP 429 on the upgrade endpoint). The agent retries after its backoff.
	ErrRateLimited = errors.New("tunnel: too many failed attempts")

	// ErrHandshake: the proxy did not answer the upgrade with 101 Switching Protocols for a reason
	// other than the ones above (wrong path, an L7 proxy that drops Upgrade, a non-ks-mc server).
	ErrHandshake = errors.New("tunnel: handshake failed")

	// ErrCAHashMismatch: the proxy's certificate chain holds no CA whose SubjectPublicKeyInfo
	// hashes to the pinned --ca-cert-hash, or the leaf is not signed by it.
	ErrCAHashMismatch = errors.New("x509: proxy certificate does not chain to the pinned CA")

	// ErrUnknownTarget: a stream header names a target other than "kubernetes" or "kubesphere",
	// or an auth mode that target does not allow. The agent refuses the stream.
	ErrUnknownTarget = errors.New("tunnel: unknown stream target")

	// ErrNoAgent: no agent session of the cluster is connected (or all are going away).
	ErrNoAgent = errors.New("tunnel: no agent connected for cluster")

	// ErrNoRelay: the cluster's agents are connected, but none offers FeatureKubeH2 (an older
	// agent, or one whose credentials are not a bearer token); the kube listener then forwards
	// the client's requests one by one.
	ErrNoRelay = errors.New("tunnel: no agent relays http/2 connections")

	// ErrGoAway: the peer announced that it is shutting down; no new streams are opened on it.
	ErrGoAway = errors.New("tunnel: peer is going away")

	// ErrBadStreamHeader: a stream header or its answer is malformed or too long.
	ErrBadStreamHeader = errors.New("tunnel: malformed stream header")

	// ErrStreamLimit: a session or a cluster already has its maximum of open streams
	// (Config.MaxStreamsPerSession, ProxyConfig.MaxStreamsPerCluster); the client gets 503.
	ErrStreamLimit = errors.New("tunnel: too many open streams")

	// ErrProxyUnavailable: the proxy answered 503 to the upgrade: it is starting (its Cluster cache
	// is not synced yet), a standby replica, or draining. The agent retries with the short cap
	// (Backoff.MaxRefused), as for a refused connection. It also wraps ErrHandshake.
	ErrProxyUnavailable = errors.New("tunnel: proxy not serving agents yet")

	// ErrCertOtherCluster: a per-cluster listener was shown a client certificate of the proxy CA
	// issued for another cluster (the TLS handshake fails).
	ErrCertOtherCluster = errors.New("tunnel: client certificate was issued for another cluster")

	// ErrInvalidConfig is wrapped by every Config/AgentConfig/ProxyConfig validation error.
	ErrInvalidConfig = errors.New("tunnel: invalid config")
)
