package tunnel

import (
	"fmt"
	"net/http"
	"time"

	"golang.org/x/crypto/ssh"
)

// towerSSHConfig is the proxy's SSH server configuration for Tower agents (kubesphere/tower
// v0.2.1 pkg/proxy/proxy.go NewServer): version SSH-kubesphere-v1-server, an ECDSA P-256 host
// key, password authentication that admits the agent's empty user and password. The agent's real
// credential is the token in its config request, checked after the SSH handshake: refusing at the
// SSH layer would make Tower's agent exit (pkg/agent/agent.go ends its loop on a handshake error),
// a refused config request makes it retry.
func (p *Proxy) towerSSHConfig() *ssh.ServerConfig {
	c := &ssh.ServerConfig{
		ServerVersion: TowerServerVersion,
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) {
			return &ssh.Permissions{}, nil
		},
		MaxAuthTries: 3,
	}
	c.AddHostKey(p.tower.signer)
	return c
}

// serveTower serves a Tower agent's websocket upgrade: SSH over the websocket, the config request
// (name, token, targets), then a session (spec.md "Tower agents").
//
// Order, as for ks-mc agents: the upgrade, the SSH handshake and the config request must all
// complete within Config.HandshakeTimeout; the cluster name is validated before any use; the
// token is compared in constant time (unknown names cost the same) before the rate limiter is
// consulted; every refused credential gets the same answer ("Unauthorized agent", Tower's own);
// only then are the downgrade protection and the agent's targets checked.
func (p *Proxy) serveTower(w http.ResponseWriter, r *http.Request) {
	ip := remoteIP(r.RemoteAddr)
	switch {
	case p.draining.Load():
		http.Error(w, "proxy is shutting down", http.StatusServiceUnavailable)
		return
	case p.standby.Load():
		http.Error(w, "proxy replica is on standby (not the leader)", http.StatusServiceUnavailable)
		return
	case p.starting.Load():
		http.Error(w, "proxy is starting (its Cluster cache is not synced yet): retry shortly", http.StatusServiceUnavailable)
		return
	}
	select {
	case p.tower.handshakes <- struct{}{}:
		defer func() { <-p.tower.handshakes }()
	default:
		p.metrics.authFailures.add("tower_busy")
		http.Error(w, "too many agent handshakes in progress", http.StatusServiceUnavailable)
		return
	}
	timeout := p.cfg.Config.HandshakeTimeout
	ws, err := towerUpgrader(timeout).Upgrade(w, r, nil)
	if err != nil {
		p.metrics.authFailures.add("tower_upgrade")
		p.tower.warn.log(p.log, "tower agent refused: bad websocket upgrade", "remote", ip)
		return
	}
	deadline := time.Now().Add(timeout)
	_ = ws.UnderlyingConn().SetDeadline(deadline)
	conn := newWSConn(ws)
	sconn, chans, reqs, err := ssh.NewServerConn(conn, p.towerSSHConfig())
	if err != nil {
		_ = ws.Close()
		p.metrics.authFailures.add("tower_handshake")
		p.tower.warn.log(p.log, "tower agent refused: SSH handshake failed", "remote", ip, "err", err.Error())
		return
	}
	var req *ssh.Request
	t := time.NewTimer(time.Until(deadline))
	select {
	case req = <-reqs:
	case <-t.C:
	}
	t.Stop()
	fail := func(reason, answer string) {
		if req != nil && req.WantReply {
			_ = req.Reply(false, []byte(answer))
		}
		_ = sconn.Close()
		p.metrics.authFailures.add(reason)
	}
	if req == nil {
		fail("tower_handshake", "")
		p.tower.warn.log(p.log, "tower agent refused: no config request in time", "remote", ip)
		return
	}
	if req.Type != TowerConfigRequest {
		fail("tower_handshake", "expecting config request")
		p.tower.warn.log(p.log, "tower agent refused: first request is not config", "remote", ip)
		return
	}
	cfg, err := parseTowerConfig(req.Payload)
	if err != nil {
		fail("tower_config", err.Error())
		p.tower.warn.log(p.log, "tower agent refused: malformed config request", "remote", ip, "length", len(req.Payload))
		return
	}
	cluster := cfg.Name
	if !validClusterName(cluster) {
		// Never logged, never a limiter key.
		fail("invalid_cluster_name", towerRefused)
		p.warn.log(p.log, "tower agent refused: malformed cluster name", "remote", ip, "length", len(cluster))
		return
	}
	log := p.log.WithValues("cluster", cluster, "remote", ip, "protocol", ProtocolTower)
	var identity string
	if cfg.Token == "" {
		err = fmt.Errorf("no token: %w", ErrUnauthorized)
	} else if ia, ok := p.cfg.Authenticator.(IdentityAuthenticator); ok {
		identity, err = ia.AuthenticateIdentity(cluster, cfg.Token)
	} else {
		err = p.cfg.Authenticator.Authenticate(cluster, cfg.Token)
	}
	if err != nil {
		if !p.limiter.fail(ip + "/" + cluster) {
			fail("rate_limited", "too many failed attempts, retry later")
			return
		}
		reason := "unauthorized"
		if errorsIs(err, ErrUnknownCluster) {
			reason = "unknown_cluster"
		}
		fail("unauthorized", towerRefused)
		log.Info("tower agent refused", "reason", reason)
		return
	}
	if !p.towerAllowed(cluster) {
		fail("tower_refused", "cluster "+cluster+" is served by the ks-mc agent: Tower agents are refused (Cluster annotation "+AgentProtocolAnnotation+"="+ProtocolKsMC+")")
		log.Info("tower agent refused: the Cluster is marked as migrated to the ks-mc agent (downgrade protection)")
		return
	}
	targets, err := validateTowerTargets(cfg)
	if err != nil {
		fail("tower_config", err.Error())
		log.Info("tower agent refused", "reason", err.Error())
		return
	}
	_ = ws.UnderlyingConn().SetDeadline(time.Time{})
	s := &towerSession{cluster: cluster, remote: ip, since: time.Now(), conn: sconn, token: cfg.Token,
		identity: identity, targets: targets, maxOpen: p.cfg.Config.MaxStreamsPerSession, closed: make(chan struct{}),
		log: log.WithValues("kube", targets.kube, "kubesphere", targets.ks)}
	// Registered before the agent hears "accepted": once it logs Connected, requests are served
	// (a channel opened meanwhile waits in the agent's SSH connection until it accepts channels).
	p.startTowerSession(s, reqs, chans)
	if err := req.Reply(true, nil); err != nil {
		_ = sconn.Close()
	}
}
