package tunnel

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Tower v0.2.x wire constants (kubesphere/tower v0.2.1 pkg/version/version.go, pkg/proxy/proxy.go,
// pkg/utils/ssh_conn.go); spec.md "Tower agents" describes them.
const (
	// TowerProtocol is the websocket subprotocol of Tower agents and the middle of both SSH
	// version strings.
	TowerProtocol = "kubesphere-v1"
	// TowerServerVersion is the proxy's SSH version string.
	TowerServerVersion = "SSH-" + TowerProtocol + "-server"
	// TowerClientVersion is the Tower agent's SSH version string.
	TowerClientVersion = "SSH-" + TowerProtocol + "-client"
	// TowerChannelType is the type of every SSH channel the proxy opens; its extra data is the
	// host:port the agent dials (raw bytes, no length prefix).
	TowerChannelType = "kubesphere"
	// TowerConfigRequest is the agent's first global request: its JSON config.
	TowerConfigRequest = "config"
	// TowerPingRequest is the agent's keepalive global request.
	TowerPingRequest = "ping"
	// towerKeepaliveRequest is the proxy's keepalive; a Tower agent answers every unknown request
	// false (ssh.DiscardRequests), which proves the session is alive all the same.
	towerKeepaliveRequest = "keepalive@ks-mc.io"
	// towerRefused is the answer of Tower's proxy to an unknown agent or a wrong token; ks-mc uses it
	// for every refused credential (no name oracle).
	towerRefused = "Unauthorized agent"
	// maxTowerMessage bounds one websocket message (the largest SSH packet x/crypto accepts is
	// 256 KiB).
	maxTowerMessage = 256<<10 + 1024
	// maxTowerConfig bounds the config payload (a CA bundle, a client certificate and key or a
	// service-account token: a few KiB).
	maxTowerConfig = 64 << 10
	// maxTowerHandshakes bounds the Tower handshakes (upgrade, SSH key exchange, config) in progress
	// at once: each costs a key exchange before anything is authenticated.
	maxTowerHandshakes = 64
)

// Values of ProxyConfig.TowerAgents.
const (
	// TowerAgentsAuto serves Tower agents of every Cluster not marked as migrated to the ks-mc
	// agent (annotation AgentProtocolAnnotation=ks-mc).
	TowerAgentsAuto = "auto"
	// TowerAgentsNever refuses every Tower agent (their upgrade gets 404, as from a proxy without
	// Tower support).
	TowerAgentsNever = "never"
)

// AgentProtocolAnnotation names the agent protocol: on a Cluster ("ks-mc" once its member runs
// the ks-mc agent: Tower agents of that Cluster are refused) and on the heartbeat Lease (the
// protocol of the session that serves).
const AgentProtocolAnnotation = kubesphere.AgentProtocolAnnotation

// Protocols, the values of AgentProtocolAnnotation and of the metrics' protocol label.
const (
	ProtocolKsMC  = string(kubesphere.TunnelKsMc)
	ProtocolTower = string(kubesphere.TunnelTower)
)

// isTowerUpgrade reports a Tower agent's websocket upgrade. Tower's proxy (pkg/proxy/proxy.go
// handleClientHandler) looks at the headers only, on any path: Upgrade: websocket (any case) and
// Sec-WebSocket-Protocol exactly kubesphere-v1.
func isTowerUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket") && r.Header.Get("Sec-WebSocket-Protocol") == TowerProtocol
}

// towerUpgrader upgrades like Tower's proxy: 1 KiB buffers, any Origin, and no subprotocol in the
// answer (Tower's upgrader names none; its agent does not check).
func towerUpgrader(timeout time.Duration) *websocket.Upgrader {
	return &websocket.Upgrader{
		HandshakeTimeout: timeout,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
		CheckOrigin:      func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, _ error) {
			http.Error(w, http.StatusText(status), status)
		},
	}
}

// wsConn is a net.Conn over a websocket as Tower's pkg/utils/ws_conn.go frames it: every Write is
// one binary message, reads concatenate the messages. Text messages are read as bytes too (Tower
// only warns).
type wsConn struct {
	*websocket.Conn
	wmu sync.Mutex
	buf []byte
}

func newWSConn(c *websocket.Conn) *wsConn {
	c.SetReadLimit(maxTowerMessage)
	return &wsConn{Conn: c}
}

func (c *wsConn) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		_, msg, err := c.ReadMessage()
		if err != nil {
			return 0, err
		}
		c.buf = msg
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	return c.UnderlyingConn().SetDeadline(t)
}

var _ net.Conn = (*wsConn)(nil)
