package tunnel

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
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
