//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
	"github.com/ks-mc/ks-mc/test/sandbox"
)

// TestProxyStandbyNotReady: with --leader-elect, only the Lease holder passes readiness (the
// rendered Deployment's readinessProbe is /readyz), so the tower and mc-<name> Services, which
// select app=tower on every replica, never send a connection to a standby; /health (liveness)
// stays 200 on both.
func TestProxyStandbyNotReady(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host"}})
	host := s.Cluster("host")
	ports := map[string]int{}
	for _, name := range []string{"proxy-a", "proxy-b"} {
		ports[name] = freeTCPPort(t, host.NodeIP)
		startKSMC(t, []string{"POD_NAME=" + name}, "proxy", "--kubeconfig", s.Kubeconfig, "--context", "host",
			"--bind-address", host.NodeIP, "--port", fmt.Sprint(ports[name]), "--leader-elect", "--drain-timeout", "2s")
	}
	cs, err := host.Client()
	if err != nil {
		t.Fatal(err)
	}
	get := func(name, path string) (int, error) {
		resp, err := http.Get(fmt.Sprintf("http://%s:%d%s", host.NodeIP, ports[name], path))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	eventually(t, time.Minute, "the leader ready, the standby not", func() error {
		l, err := cs.CoordinationV1().Leases("kubesphere-system").Get(t.Context(), "ks-mc-proxy", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.HolderIdentity == nil || ports[*l.Spec.HolderIdentity] == 0 {
			return fmt.Errorf("no holder yet")
		}
		leader := *l.Spec.HolderIdentity
		for name := range ports {
			ready, err := get(name, tunnel.ReadyPath)
			if err != nil {
				return err
			}
			health, err := get(name, "/health")
			if err != nil {
				return err
			}
			want := http.StatusServiceUnavailable
			if name == leader {
				want = http.StatusOK
			}
			if ready != want || health != http.StatusOK {
				return fmt.Errorf("%s (leader %s): %s %d, /health %d", name, leader, tunnel.ReadyPath, ready, health)
			}
		}
		return nil
	})
}
