package tunnel

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"

	"github.com/go-logr/logr"
)

// Authenticator decides whether an agent may serve cluster. It returns nil, or an error wrapping
// ErrUnknownCluster or ErrUnauthorized. Implementations compare tokens with TokenEqual.
type Authenticator interface {
	Authenticate(cluster, token string) error
}

// StaticAuthenticator serves a fixed cluster → token map.
type StaticAuthenticator map[string]string

// IdentityAuthenticator is an Authenticator that also names what an agent was admitted for (the
// Controller: the Cluster's UID). The proxy keeps the identity and the token with the session, and
// Revalidate closes every session whose token no longer authenticates or whose identity changed (a
// Cluster deleted and created again under the same name).
type IdentityAuthenticator interface {
	Authenticator
	AuthenticateIdentity(cluster, token string) (identity string, err error)
}

// UnknownClusterToken is compared against (by every Authenticator) when the cluster is unknown,
// so that an unknown name costs the same work as a wrong token (no timing oracle for names).
const UnknownClusterToken = "ks-mc: no such cluster; this value never matches a real token"

// Authenticate implements Authenticator.
func (m StaticAuthenticator) Authenticate(cluster, token string) error {
	want, ok := m[cluster]
	if !ok {
		_ = TokenEqual(UnknownClusterToken, token)
		return fmt.Errorf("cluster %q: %w", cluster, ErrUnknownCluster)
	}
	if !TokenEqual(want, token) {
		return fmt.Errorf("cluster %q: %w", cluster, ErrUnauthorized)
	}
	return nil
}

// TokenEqual compares two tokens in constant time (also independent of their lengths); an empty
// expected token never matches.
func TokenEqual(want, got string) bool {
	if want == "" {
		return false
	}
	a, b := sha256.Sum256([]byte(want)), sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// admission is an agent's upgrade request that passed admit.
type admission struct {
	cluster, token, identity, ip string
	log                          logr.Logger
}

// admit checks an agent's upgrade request to protocol (the tunnel's, or a data connection's) and
// answers it when it fails.
//
// Order: the cluster name is validated before any use; the token is checked (constant time,
// unknown names cost the same) before the rate limiter is consulted, so a valid agent always gets
// through; only failures consume the (remote IP, cluster) bucket, and a failure with an empty
// bucket is answered 429 instead of 401.
func (p *Proxy) admit(w http.ResponseWriter, r *http.Request, protocol string) (admission, bool) {
	if r.Method != http.MethodGet || !headerHasToken(r.Header, "Connection", "upgrade") ||
		!headerHasToken(r.Header, "Upgrade", protocol) {
		w.Header().Set("Upgrade", protocol)
		http.Error(w, "expected GET with Connection: Upgrade and Upgrade: "+protocol, http.StatusUpgradeRequired)
		return admission{}, false
	}
	ip := remoteIP(r.RemoteAddr)
	if p.draining.Load() {
		http.Error(w, "proxy is shutting down", http.StatusServiceUnavailable)
		return admission{}, false
	}
	if p.standby.Load() {
		http.Error(w, "proxy replica is on standby (not the leader)", http.StatusServiceUnavailable)
		return admission{}, false
	}
	if p.starting.Load() {
		http.Error(w, "proxy is starting (its Cluster cache is not synced yet): retry shortly", http.StatusServiceUnavailable)
		return admission{}, false
	}
	cluster := r.Header.Get(ClusterHeader)
	if !validClusterName(cluster) {
		// Never logged, never a limiter key: the value is unbounded and unvalidated.
		p.metrics.authFailures.add("invalid_cluster_name")
		p.warn.log(p.log, "agent refused: malformed "+ClusterHeader+" header", "remote", ip, "length", len(cluster))
		http.Error(w, refusedAnswer, http.StatusUnauthorized)
		return admission{}, false
	}
	log := p.log.WithValues("cluster", cluster, "remote", ip)
	if r.TLS == nil && !p.cfg.AllowPlaintextAgents {
		p.metrics.authFailures.add("plaintext")
		log.Info("agent refused: plaintext connection, use https")
		http.Error(w, "agents must connect over https", http.StatusForbidden)
		return admission{}, false
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	var err error
	var identity string
	if !ok || token == "" {
		err = fmt.Errorf("no bearer token: %w", ErrUnauthorized)
	} else if ia, isIA := p.cfg.Authenticator.(IdentityAuthenticator); isIA {
		identity, err = ia.AuthenticateIdentity(cluster, token)
	} else {
		err = p.cfg.Authenticator.Authenticate(cluster, token)
	}
	if err != nil {
		// Failures are counted per address and cluster: agents behind one NAT address (a NodePort,
		// an egress gateway) do not pay for a misconfigured neighbour.
		limitKey := ip + "/" + cluster
		if !p.limiter.fail(limitKey) {
			p.metrics.authFailures.add("rate_limited")
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many failed attempts", http.StatusTooManyRequests)
			return admission{}, false
		}
		reason := "unauthorized"
		if errorsIs(err, ErrUnknownCluster) {
			reason = "unknown_cluster"
		}
		// The metric does not tell unknown names from wrong tokens (the port is public); the log
		// does, and names the cluster and the address, never the token.
		p.metrics.authFailures.add("unauthorized")
		log.Info("agent refused", "reason", reason, "code", http.StatusUnauthorized)
		http.Error(w, refusedAnswer, http.StatusUnauthorized)
		return admission{}, false
	}
	return admission{cluster: cluster, token: token, identity: identity, ip: ip, log: log}, true
}
