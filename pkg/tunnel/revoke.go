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
		reason := p.revokeCheck(cluster, s.token, s.identity)
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

// revokeCheck says why a session admitted with token and identity may no longer be served by
// cluster ("" when it still may): the token no longer authenticates, the Cluster is gone, or (with
// an IdentityAuthenticator) it was created again under the same name. Both protocols use it.
func (p *Proxy) revokeCheck(cluster, token, identity string) string {
	if ia, ok := p.cfg.Authenticator.(IdentityAuthenticator); ok {
		id, err := ia.AuthenticateIdentity(cluster, token)
		switch {
		case err != nil:
			return revokeReason(err)
		case id != identity:
			return "cluster_recreated"
		}
		return ""
	}
	if err := p.cfg.Authenticator.Authenticate(cluster, token); err != nil {
		return revokeReason(err)
	}
	return ""
}

func revokeReason(err error) string {
	if errorsIs(err, ErrUnknownCluster) {
		return "cluster_gone"
	}
	return "token_changed"
}
