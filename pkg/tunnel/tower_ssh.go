package tunnel

import (
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
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
	h, ok := p.towerHandshake(w, r, ip)
	if !ok {
		return
	}
	s, ok := p.towerAuthenticate(h, ip)
	if !ok {
		return
	}
	// Registered before the agent hears "accepted": once it logs Connected, requests are served
	// (a channel opened meanwhile waits in the agent's SSH connection until it accepts channels).
	p.startTowerSession(s, h.reqs, h.chans)
	if err := h.req.Reply(true, nil); err != nil {
		_ = h.sconn.Close()
	}
}

// towerConn is a Tower agent's connection between the SSH handshake and its session: the
// websocket, the SSH connection and its channels, and the agent's first request.
type towerConn struct {
	ws    *websocket.Conn
	sconn *ssh.ServerConn
	chans <-chan ssh.NewChannel
	reqs  <-chan *ssh.Request
	req   *ssh.Request
}

// towerFail refuses the agent: answers its request (when it wants a reply), closes the SSH
// connection and counts the refusal.
func (p *Proxy) towerFail(h *towerConn, reason, answer string) {
	if h.req != nil && h.req.WantReply {
		_ = h.req.Reply(false, []byte(answer))
	}
	_ = h.sconn.Close()
	p.metrics.authFailures.add(reason)
}

// towerHandshake upgrades to a websocket, runs the SSH handshake and waits for the config
// request, all within Config.HandshakeTimeout (the deadline stays set on the websocket).
func (p *Proxy) towerHandshake(w http.ResponseWriter, r *http.Request, ip string) (*towerConn, bool) {
	timeout := p.cfg.Config.HandshakeTimeout
	ws, err := towerUpgrader(timeout).Upgrade(w, r, nil)
	if err != nil {
		p.metrics.authFailures.add("tower_upgrade")
		p.tower.warn.log(p.log, "tower agent refused: bad websocket upgrade", "remote", ip)
		return nil, false
	}
	deadline := time.Now().Add(timeout)
	_ = ws.UnderlyingConn().SetDeadline(deadline)
	conn := newWSConn(ws)
	sconn, chans, reqs, err := ssh.NewServerConn(conn, p.towerSSHConfig())
	if err != nil {
		_ = ws.Close()
		p.metrics.authFailures.add("tower_handshake")
		p.tower.warn.log(p.log, "tower agent refused: SSH handshake failed", "remote", ip, "err", err.Error())
		return nil, false
	}
	h := &towerConn{ws: ws, sconn: sconn, chans: chans, reqs: reqs}
	t := time.NewTimer(time.Until(deadline))
	select {
	case h.req = <-reqs:
	case <-t.C:
	}
	t.Stop()
	if h.req == nil {
		p.towerFail(h, "tower_handshake", "")
		p.tower.warn.log(p.log, "tower agent refused: no config request in time", "remote", ip)
		return nil, false
	}
	if h.req.Type != TowerConfigRequest {
		p.towerFail(h, "tower_handshake", "expecting config request")
		p.tower.warn.log(p.log, "tower agent refused: first request is not config", "remote", ip)
		return nil, false
	}
	return h, true
}

// towerAuthenticate checks the config request: the cluster name, the token (before the rate
// limiter), the downgrade protection and the agent's targets. On success it clears the
// handshake deadline and returns the (not yet registered) session.
func (p *Proxy) towerAuthenticate(h *towerConn, ip string) (*towerSession, bool) {
	req := h.req
	cfg, err := parseTowerConfig(req.Payload)
	if err != nil {
		p.towerFail(h, "tower_config", err.Error())
		p.tower.warn.log(p.log, "tower agent refused: malformed config request", "remote", ip, "length", len(req.Payload))
		return nil, false
	}
	cluster := cfg.Name
	if !validClusterName(cluster) {
		// Never logged, never a limiter key.
		p.towerFail(h, "invalid_cluster_name", towerRefused)
		p.warn.log(p.log, "tower agent refused: malformed cluster name", "remote", ip, "length", len(cluster))
		return nil, false
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
			p.towerFail(h, "rate_limited", "too many failed attempts, retry later")
			return nil, false
		}
		reason := "unauthorized"
		if errorsIs(err, ErrUnknownCluster) {
			reason = "unknown_cluster"
		}
		p.towerFail(h, "unauthorized", towerRefused)
		log.Info("tower agent refused", "reason", reason)
		return nil, false
	}
	if !p.towerAllowed(cluster) {
		p.towerFail(h, "tower_refused", "cluster "+cluster+" is served by the ks-mc agent: Tower agents are refused (Cluster annotation "+AgentProtocolAnnotation+"="+ProtocolKsMC+")")
		log.Info("tower agent refused: the Cluster is marked as migrated to the ks-mc agent (downgrade protection)")
		return nil, false
	}
	targets, err := validateTowerTargets(cfg)
	if err != nil {
		p.towerFail(h, "tower_config", err.Error())
		log.Info("tower agent refused", "reason", err.Error())
		return nil, false
	}
	_ = h.ws.UnderlyingConn().SetDeadline(time.Time{})
	s := &towerSession{cluster: cluster, remote: ip, since: time.Now(), conn: h.sconn, token: cfg.Token,
		identity: identity, targets: targets, maxOpen: p.cfg.Config.MaxStreamsPerSession, closed: make(chan struct{}),
		log: log.WithValues("kube", targets.kube, "kubesphere", targets.ks)}
	return s, true
}
