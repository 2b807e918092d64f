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

// TestProxyLeaderElection runs two `kubectl ks-mc proxy --leader-elect` replicas against a real
// kube-apiserver: exactly one holds the Lease and accepts agents, the other answers 503; when the
// leader stops, the standby takes the Lease over and accepts agents.
func TestProxyLeaderElection(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host"}})
	host := s.Cluster("host")
	type replica struct {
		name string
		port int
		p    *proc
	}
	var reps []*replica
	for _, name := range []string{"proxy-a", "proxy-b"} {
		port := freeTCPPort(t, host.NodeIP)
		p := startKSMC(t, []string{"POD_NAME=" + name}, "proxy", "--kubeconfig", s.Kubeconfig, "--context", "host",
			"--bind-address", host.NodeIP, "--port", fmt.Sprint(port), "--leader-elect", "--drain-timeout", "2s")
		reps = append(reps, &replica{name: name, port: port, p: p})
	}
	// agentAnswer is what the agent endpoint answers an (unauthorised) upgrade: 503 on a standby.
	agentAnswer := func(r *replica) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s:%d%s", host.NodeIP, r.port, tunnel.TunnelPath), nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", tunnel.UpgradeProtocol)
		req.Header.Set(tunnel.ClusterHeader, "no-such-cluster")
		req.Header.Set("Authorization", "Bearer not-a-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	cs, err := host.Client()
	if err != nil {
		t.Fatal(err)
	}
	holder := func() (string, error) {
		l, err := cs.CoordinationV1().Leases("kubesphere-system").Get(t.Context(), "ks-mc-proxy", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if l.Spec.HolderIdentity == nil {
			return "", nil
		}
		return *l.Spec.HolderIdentity, nil
	}
	var leader, standby *replica
	eventually(t, time.Minute, "one replica leads, the other stands by", func() error {
		id, err := holder()
		if err != nil {
			return err
		}
		for _, r := range reps {
			if r.name == id {
				leader = r
			} else {
				standby = r
			}
		}
		if leader == nil || standby == nil {
			return fmt.Errorf("lease holder %q", id)
		}
		lc, err := agentAnswer(leader)
		if err != nil {
			return err
		}
		sc, err := agentAnswer(standby)
		if err != nil {
			return err
		}
		if lc == http.StatusServiceUnavailable || sc != http.StatusServiceUnavailable {
			return fmt.Errorf("leader %s answers %d, standby %s answers %d", leader.name, lc, standby.name, sc)
		}
		return nil
	})
	t.Logf("%s leads, %s stands by", leader.name, standby.name)

	start := time.Now()
	leader.p.term()
	eventually(t, time.Minute, "the standby takes over", func() error {
		id, err := holder()
		if err != nil {
			return err
		}
		if id != standby.name {
			return fmt.Errorf("lease holder %q", id)
		}
		code, err := agentAnswer(standby)
		if err != nil {
			return err
		}
		if code == http.StatusServiceUnavailable {
			return fmt.Errorf("%s still answers 503", standby.name)
		}
		return nil
	})
	t.Logf("%s took over %s after the leader stopped", standby.name, time.Since(start).Round(time.Millisecond))
}
