package tunnel

// Revalidate checks every session of cluster against the Authenticator again and closes those
// whose token no longer authenticates (spec.connection.token rotated, the Cluster deleted or no
// longer served) or whose identity changed (with an IdentityAuthenticator: the Cluster was deleted
// and created again under the same name, a new UID). It returns how many sessions it closed. The
// Controller calls it on every change of a Cluster, so a revoked agent is cut off as soon as the
// proxy's Cluster cache sees the change.
func (p *Proxy) Revalidate(cluster string) int {
	closed := 0
	for _, s := range p.reg.sessions(cluster) {
		if s.revoked.Load() {
			continue
		}
		reason := ""
		if ia, ok := p.cfg.Authenticator.(IdentityAuthenticator); ok {
			id, err := ia.AuthenticateIdentity(cluster, s.token)
			switch {
			case err != nil:
				reason = revokeReason(err)
			case id != s.identity:
				reason = "cluster_recreated"
			}
		} else if err := p.cfg.Authenticator.Authenticate(cluster, s.token); err != nil {
			reason = revokeReason(err)
		}
		if reason == "" {
			continue
		}
		s.revoked.Store(true)
		p.metrics.revokedSessions.add(reason)
		p.log.Info("agent session revoked: closing it", "cluster", cluster, "agent", s.agentID, "remote", s.remote, "reason", reason)
		_ = s.sess.Close()
		closed++
	}
	return closed + p.revalidateTower(cluster)
}

func revokeReason(err error) string {
	if errorsIs(err, ErrUnknownCluster) {
		return "cluster_gone"
	}
	return "token_changed"
}
