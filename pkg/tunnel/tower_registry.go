package tunnel

import "sync"

// towerRegistry holds the Tower sessions per cluster, oldest first. Only the newest live session
// gets new streams: a rollout restart's new agent takes over at once (Tower's tower#29 refusal never
// happens) while the old one finishes what it carries and goes when its pod does.
type towerRegistry struct {
	mu       sync.Mutex
	clusters map[string][]*towerSession
}

func newTowerRegistry() *towerRegistry { return &towerRegistry{clusters: map[string][]*towerSession{}} }

func (r *towerRegistry) add(s *towerSession) (older []*towerSession, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	older = append(older, r.clusters[s.cluster]...)
	r.clusters[s.cluster] = append(r.clusters[s.cluster], s)
	return older, len(r.clusters[s.cluster])
}

func (r *towerRegistry) remove(s *towerSession) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := r.clusters[s.cluster]
	for i, x := range list {
		if x == s {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(r.clusters, s.cluster)
		return 0
	}
	r.clusters[s.cluster] = list
	return len(list)
}

func (r *towerRegistry) sessions(cluster string) []*towerSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*towerSession(nil), r.clusters[cluster]...)
}

func (r *towerRegistry) count(cluster string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.clusters[cluster])
}

func (r *towerRegistry) all() []*towerSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*towerSession
	for _, l := range r.clusters {
		out = append(out, l...)
	}
	return out
}

func (r *towerRegistry) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]int, len(r.clusters))
	for k, l := range r.clusters {
		m[k] = len(l)
	}
	return m
}

// pick returns the newest session that is neither draining nor revoked nor closed.
func (r *towerRegistry) pick(cluster string) *towerSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := r.clusters[cluster]
	for i := len(list) - 1; i >= 0; i-- {
		s := list[i]
		if !s.draining.Load() && !s.revoked.Load() && !s.isClosed() {
			return s
		}
	}
	return nil
}
