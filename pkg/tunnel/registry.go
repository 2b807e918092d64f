package tunnel

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// agentSession is one connected agent as the proxy sees it.
type agentSession struct {
	cluster   string
	agentID   string
	remote    string
	since     time.Time
	sess      *yamux.Session
	goingAway atomic.Bool // the agent sent GoAway: route new streams to its siblings
	// token and identity are what the session was admitted with; Proxy.Revalidate checks them
	// again whenever the Cluster changes. The token is never logged.
	token, identity string
	revoked         atomic.Bool
	// relayH2: the agent offered FeatureKubeH2 in its upgrade request.
	relayH2 bool
}

// registry holds the connected agents per cluster. Several agents of one cluster (a rolling
// update, two replicas) all serve: streams are spread round robin over those not going away.
// Every access goes through mu.
type registry struct {
	mu       sync.Mutex
	clusters map[string]*clusterAgents
	// maxPerSession and maxPerCluster cap open streams (0: no cap).
	maxPerSession, maxPerCluster int
}

// streamLimitError says which cap refused a stream; it wraps ErrStreamLimit.
type streamLimitError struct{ scope string }

func (e *streamLimitError) Error() string { return ErrStreamLimit.Error() + " per " + e.scope }
func (e *streamLimitError) Unwrap() error { return ErrStreamLimit }

type clusterAgents struct {
	sessions []*agentSession
	next     int
}

func newRegistry(maxPerSession, maxPerCluster int) *registry {
	return &registry{clusters: map[string]*clusterAgents{}, maxPerSession: maxPerSession, maxPerCluster: maxPerCluster}
}

// sessions returns the cluster's sessions.
func (r *registry) sessions(cluster string) []*agentSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[cluster]; c != nil {
		return append([]*agentSession(nil), c.sessions...)
	}
	return nil
}

// add registers s and returns how many agents the cluster now has.
func (r *registry) add(s *agentSession) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[s.cluster]
	if c == nil {
		c = &clusterAgents{}
		r.clusters[s.cluster] = c
	}
	c.sessions = append(c.sessions, s)
	return len(c.sessions)
}

// remove unregisters s and returns how many agents the cluster has left.
func (r *registry) remove(s *agentSession) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[s.cluster]
	if c == nil {
		return 0
	}
	for i, x := range c.sessions {
		if x == s {
			c.sessions = append(c.sessions[:i], c.sessions[i+1:]...)
			break
		}
	}
	if len(c.sessions) == 0 {
		delete(r.clusters, s.cluster)
		return 0
	}
	return len(c.sessions)
}

// count is the number of connected agents of cluster.
func (r *registry) count(cluster string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clusters[cluster]; c != nil {
		return len(c.sessions)
	}
	return 0
}

// candidates returns the cluster's sessions in round-robin order, those going away last.
func (r *registry) candidates(cluster string) []*agentSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clusters[cluster]
	if c == nil || len(c.sessions) == 0 {
		return nil
	}
	n := len(c.sessions)
	start := c.next % n
	c.next = (c.next + 1) % n
	out := make([]*agentSession, 0, n)
	var late []*agentSession
	for i := 0; i < n; i++ {
		s := c.sessions[(start+i)%n]
		if s.goingAway.Load() {
			late = append(late, s)
			continue
		}
		out = append(out, s)
	}
	return append(out, late...)
}

// all returns every session.
func (r *registry) all() []*agentSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*agentSession
	for _, c := range r.clusters {
		out = append(out, c.sessions...)
	}
	return out
}

// snapshot returns the agent count per cluster.
func (r *registry) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]int, len(r.clusters))
	for k, c := range r.clusters {
		m[k] = len(c.sessions)
	}
	return m
}

// open opens a stream on one of the cluster's sessions, skipping those going away or closed, and
// with relayH2 those that do not offer FeatureKubeH2 (ErrNoRelay when none does).
func (r *registry) open(cluster string, relayH2 bool) (*yamux.Stream, *agentSession, error) {
	cands := r.candidates(cluster)
	if len(cands) == 0 {
		return nil, nil, ErrNoAgent
	}
	if relayH2 {
		cands = slices.DeleteFunc(cands, func(s *agentSession) bool { return !s.relayH2 })
		if len(cands) == 0 {
			return nil, nil, ErrNoRelay
		}
	}
	if r.maxPerCluster > 0 {
		open := 0
		for _, s := range cands {
			open += s.sess.NumStreams()
		}
		if open >= r.maxPerCluster {
			return nil, nil, &streamLimitError{scope: "cluster"}
		}
	}
	var lastErr error
	full := 0
	for _, s := range cands {
		if r.maxPerSession > 0 && s.sess.NumStreams() >= r.maxPerSession {
			full++
			continue
		}
		st, err := s.sess.OpenStream()
		if err == nil {
			return st, s, nil
		}
		lastErr = err
		if errors.Is(err, yamux.ErrRemoteGoAway) {
			s.goingAway.Store(true)
		}
	}
	if lastErr == nil && full > 0 {
		return nil, nil, &streamLimitError{scope: "session"}
	}
	if errors.Is(lastErr, yamux.ErrRemoteGoAway) {
		return nil, nil, ErrGoAway
	}
	return nil, nil, errors.Join(ErrNoAgent, lastErr)
}
