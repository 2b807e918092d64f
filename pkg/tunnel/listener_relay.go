package tunnel

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// The kube listener ends TLS itself. A client that negotiated HTTP/2 is, when one of the
// cluster's agents offers FeatureKubeH2, spliced onto one kubernetes-h2 stream: the proxy copies
// the decrypted bytes and the agent relays the connection to its kube-apiserver (relay_h2.go), so
// no HTTP is spoken on the proxy at all. Every other client (HTTP/1.1, upgrades, an agent that
// does not relay, a relay the agent could not start) is handed to the listener's http.Server, which
// forwards request by request (listener_client.go).

// serveKube completes the TLS handshake of an accepted kube-listener connection and relays it or
// hands it to the HTTP server.
func (l *ClusterListener) serveKube(c net.Conn) {
	tc, bc := tlsServerBatched(c, l.tlsCfg, true)
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		_ = c.Close()
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == "h2" && !l.cfg.NoRelay {
		auth := AuthToken
		if len(cs.PeerCertificates) > 0 {
			auth = AuthCert
		}
		if st := l.dialRelay(auth); st != nil {
			spliceRelay(bc, st)
			return
		}
	}
	if !l.handoff.push(tc) {
		_ = tc.Close()
	}
}

// dialRelay opens a kubernetes-h2 stream and waits for the agent's answer (it is up once the
// agent's connection to the kube-apiserver is), nil when the client must be served otherwise.
func (l *ClusterListener) dialRelay(auth string) net.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandshakeTimeout)
	defer cancel()
	if rd, ok := l.cfg.Dialer.(RelayDialer); ok {
		c, err := rd.DialRelay(ctx, l.cfg.Cluster, auth)
		if err != nil && !errors.Is(err, ErrNoRelay) && !errors.Is(err, ErrNoAgent) {
			l.cfg.Logger.V(1).Info("no relay: forwarding requests one by one", "cluster", l.cfg.Cluster, "err", err.Error())
		}
		return c
	}
	st, err := l.cfg.Dialer.DialStream(ctx, l.cfg.Cluster, StreamHeader{Target: TargetKubernetesH2, Auth: auth})
	if err != nil {
		if !errors.Is(err, ErrNoRelay) && !errors.Is(err, ErrNoAgent) {
			l.cfg.Logger.V(1).Info("no relay stream: forwarding requests one by one", "cluster", l.cfg.Cluster, "err", err.Error())
		}
		return nil
	}
	_ = st.SetReadDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	if _, err := st.Read(nil); err != nil { // the agent's answer
		l.cfg.Logger.V(1).Info("agent refused the relay: forwarding requests one by one", "cluster", l.cfg.Cluster, "err", err.Error())
		_ = st.Close()
		return nil
	}
	_ = st.SetReadDeadline(time.Time{})
	return st
}

// relayPool holds the burst buffers towards relayed clients: the agent sends up to 64 KiB per
// frame (relay_h2.go), and one read then makes one write to the client.
var relayPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// spliceRelay is splice for a relayed client: its records that arrived together leave on the
// stream in one frame (recordCopy); the agent's side is copied as splice does.
func spliceRelay(client *batchedTLS, st net.Conn) {
	done := make(chan struct{}, 2)
	go func() { _ = recordCopy(st, client); done <- struct{}{} }()
	go func() { _ = adaptiveCopyPool(client, st, &relayPool); done <- struct{}{} }()
	<-done
	_ = client.Close()
	_ = st.Close()
	<-done
}
