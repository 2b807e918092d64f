package tunnel

import "time"

// Used by the heartbeat (pkg/tunnel/kube.Heartbeat).

// PingAgents pings every agent session of cluster: how many answered, the slowest round trip, and
// the last error of those that did not.
func (p *Proxy) PingAgents(cluster string) (int, time.Duration, error) {
	var ok int
	var worst time.Duration
	var lastErr error
	for _, s := range p.reg.candidates(cluster) {
		rtt, err := s.sess.Ping()
		if err != nil {
			lastErr = err
			continue
		}
		ok++
		worst = max(worst, rtt)
	}
	for _, s := range p.tower.reg.sessions(cluster) {
		rtt, err := pingTower(s, p.cfg.Config.KeepAliveTimeout)
		if err != nil {
			lastErr = err
			continue
		}
		ok++
		worst = max(worst, rtt)
	}
	return ok, worst, lastErr
}

// ConnectedClusters lists the clusters with at least one agent session.
func (p *Proxy) ConnectedClusters() []string {
	snap := p.reg.snapshot()
	for k, n := range p.tower.reg.snapshot() {
		snap[k] += n
	}
	out := make([]string, 0, len(snap))
	for k, n := range snap {
		if n > 0 {
			out = append(out, k)
		}
	}
	return out
}
