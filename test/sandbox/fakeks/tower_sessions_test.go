package fakeks

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/test/toweragent"
)

// The stand-in Tower with real agents (test/toweragent, the bytes of Tower's /agent): a matching
// agent gets a session (and AgentAvailable), a wrong token is refused as Tower refuses it
// ("Unauthorized agent"), /health answers like Tower, and the listener goes when the tower
// Deployment stops running KubeSphere's image.
func TestTowerStandInAcceptsRealAgents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodeIP := fmt.Sprintf("127.%d.%d.1", 100+time.Now().Nanosecond()%50, 200+time.Now().Nanosecond()%50)
	addr := "http://" + nodeIP + ":" + TowerPort
	tower := deployment("tower", TowerImage, map[string]string{"app": "tower"})
	host := newFakeClients(t, tower)
	cluster := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster", "metadata": map[string]any{"name": "m1"},
		"spec": map[string]any{"joinFederation": true, "connection": map[string]any{"type": "proxy", "token": "preset-token"}},
	}}
	if _, err := host.Dynamic.Resource(ClusterGVR).Create(ctx, cluster, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	log := &strings.Builder{}
	tw := &Tower{Host: host, NodeIP: nodeIP, Log: &lockedWriter{mu: &logMu, w: log}, RealAgents: true}
	tw.sess.tw = tw
	go tw.runListener(ctx)
	waitUntil(t, "the stand-in listens", func() bool {
		resp, err := http.Get(addr + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && string(b) == "OK\n"
	})
	if resp, err := http.Get(addr + "/health?x=1"); err != nil || resp.StatusCode != 404 {
		t.Errorf("a query string must 404 as in Tower: %v %v", resp, err)
	}
	run := func(token string) context.CancelFunc {
		actx, stop := context.WithCancel(ctx)
		o := toweragent.DefaultOptions()
		o.Name, o.Token, o.Server, o.KeepAlive, o.MaxRetryCount = "m1", token, addr, time.Second, 1
		o.Getenv = func(k string) string {
			return map[string]string{"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}[k]
		}
		o.ServiceAccountDir = t.TempDir()
		writeSA(t, o.ServiceAccountDir)
		o.Logf = func(string, ...any) {}
		go func() { _ = toweragent.Run(actx, o) }()
		return stop
	}
	stop := run("wrong-token")
	waitUntil(t, "the wrong token refused", func() bool {
		logMu.Lock()
		defer logMu.Unlock()
		return strings.Contains(log.String(), "Unauthorized agent")
	})
	if tw.sess.connected("m1") {
		t.Fatal("an agent with a wrong token got a session")
	}
	stop()
	stop = run("preset-token")
	defer stop()
	waitUntil(t, "a session of the matching agent", func() bool { return tw.sess.connected("m1") })
	// The tower Deployment runs something else: the listener and the sessions go.
	tower.Spec.Template.Spec.Containers[0].Image = "ghcr.io/ks-mc/ks-mc:v0"
	if _, err := host.Kube.AppsV1().Deployments(Namespace).Update(ctx, tower, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the listener closed", func() bool {
		_, err := http.Get(addr + "/health")
		return err != nil && !tw.sess.connected("m1")
	})
	if strings.Contains(log.String(), "preset-token") || strings.Contains(log.String(), "wrong-token") {
		t.Error("a token reached the log")
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeSA(t *testing.T, dir string) {
	t.Helper()
	for name, data := range map[string]string{"token": "sa-token", "ca.crt": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
