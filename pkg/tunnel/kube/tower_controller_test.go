package kube

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// towerConn connects like a Tower v0.2.1 agent (websocket with subprotocol kubesphere-v1, SSH
// client, config request) and returns the SSH connection and the config answer. The full Tower
// agent is test/toweragent; this is the part the Controller's tests need.
func towerConn(t *testing.T, addr string) (ssh.Conn, bool, string) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{tunnel.TowerProtocol}}
	ws, _, err := d.Dial("ws://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _, reqs, err := ssh.NewClientConn(&wsRW{Conn: ws}, "", &ssh.ClientConfig{Auth: []ssh.AuthMethod{ssh.Password("")},
		ClientVersion: tunnel.TowerClientVersion, HostKeyCallback: ssh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	cfg, _ := json.Marshal(tunnel.TowerConfig{Name: testCluster, Token: testToken, KubernetesSvcHost: "127.0.0.1:1", KubeSphereSvcHost: "127.0.0.1:2"})
	ok, reply, err := c.SendRequest(tunnel.TowerConfigRequest, true, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, ok, string(reply)
}

type wsRW struct {
	*websocket.Conn
	buf []byte
}

func (c *wsRW) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		_, m, err := c.ReadMessage()
		if err != nil {
			return 0, err
		}
		c.buf = m
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *wsRW) Write(p []byte) (int, error) {
	return len(p), c.WriteMessage(websocket.BinaryMessage, p)
}

func (c *wsRW) SetDeadline(t time.Time) error { return c.UnderlyingConn().SetDeadline(t) }

// TestControllerTowerDowngrade: through the Controller (informer, Authenticator, TowerPolicy,
// revalidation), a Tower agent of a Cluster is served, the heartbeat Lease names its protocol, and
// once the Cluster gets ks-mc.io/agent-protocol=ks-mc its session is drained and its retry refused.
func TestControllerTowerDowngrade(t *testing.T) {
	h := newHarness(t, "tcp")
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{kubesphere.ClusterGVR: "ClusterList"},
		clusterObj(testCluster, "proxy", 0, testToken, time.Now().Add(-time.Hour)))
	kube := fake.NewClientset(serviceWithIP(testCluster, "10.96.0.11"))
	log := h.logs.logger()
	cc := DefaultControllerConfig()
	cc.Dynamic, cc.Kube, cc.CA, cc.BindAddress, cc.Logger = dyn, kube, h.ca, "127.0.0.1", &log
	base := freePortBase(t)
	cc.PortMin, cc.PortMax = base, base+20
	ctrl, err := NewController(cc)
	if err != nil {
		t.Fatal(err)
	}
	p := h.startWith(ctrl)
	ctrl.SetProxy(p)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ctrl.Close() })
	go func() { _ = ctrl.Run(ctx, 1) }()
	waitFor(t, "cache synced", ctrl.HasSynced)
	if _, ok, reply := towerConn(t, h.addr); !ok || reply != "" {
		t.Fatalf("tower agent refused: %q", reply)
	}
	h.waitAgents(1)
	waitFor(t, "listener up for the tower agent", func() bool { return ctrl.ListenerAddr(testCluster) != nil })
	hb := &Heartbeat{Kube: kube, Namespace: "kubesphere-system", Identity: "p", Interval: time.Second, Proxy: p}
	hb.Beat(ctx, logr.Discard())
	l, err := kube.CoordinationV1().Leases("kubesphere-system").Get(ctx, kubesphere.HeartbeatLeaseName(testCluster), metav1.GetOptions{})
	if err != nil || l.Annotations[kubesphere.AgentProtocolAnnotation] != tunnel.ProtocolTower || l.Annotations[kubesphere.HeartbeatAgentsAnnotation] != "1" {
		t.Fatalf("lease %v %v", l, err)
	}
	// A ks-mc agent joins: the Lease says ks-mc.
	h.startAgent(agentOpts{})
	h.waitAgents(2)
	hb.Beat(ctx, logr.Discard())
	l, _ = kube.CoordinationV1().Leases("kubesphere-system").Get(ctx, kubesphere.HeartbeatLeaseName(testCluster), metav1.GetOptions{})
	if l.Annotations[kubesphere.AgentProtocolAnnotation] != tunnel.ProtocolKsMC || l.Annotations[kubesphere.HeartbeatAgentsAnnotation] != "2" {
		t.Fatalf("lease with both protocols: %v", l.Annotations)
	}
	// migrate marks the Cluster: the Tower session goes, its retry is refused.
	u, err := dyn.Resource(kubesphere.ClusterGVR).Get(ctx, testCluster, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.SetAnnotations(map[string]string{kubesphere.AgentProtocolAnnotation: tunnel.ProtocolKsMC})
	if _, err := dyn.Resource(kubesphere.ClusterGVR).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tower session drained", func() bool { return p.TowerAgents(testCluster) == 0 })
	if p.Agents(testCluster) != 1 {
		t.Fatalf("agents %d, want the ks-mc one", p.Agents(testCluster))
	}
	if _, ok, reply := towerConn(t, h.addr); ok || !strings.Contains(reply, "served by the ks-mc agent") {
		t.Fatalf("tower agent after migration: %v %q", ok, reply)
	}
}
