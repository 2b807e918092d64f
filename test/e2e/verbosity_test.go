//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// TestNoSecretAtHighestVerbosity runs every command at the highest verbosity it accepts (-v and
// --vmodule are capped at 7; both are asked for 10) against the sandbox and checks that no
// secret appears in any output: the jwtSecrets, the Cluster token, the agent token, the proxy
// CA key and the Cluster kubeconfig's client key.
func TestNoSecretAtHighestVerbosity(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1"}})
	host, m1 := s.Cluster("host"), s.Cluster("member1")
	ctx := context.Background()
	loud := []string{"-v=10", "--vmodule=*=10"}
	type named struct{ what, out string }
	var outs []named
	run := func(args ...string) result {
		r := ksmc(t, s, append(args, loud...)...)
		outs = append(outs, named{strings.Join(args[:min(len(args), 3)], " "), r.stdout + r.stderr})
		return r
	}
	secrets := map[string]string{"host jwtSecret": jwtOf(t, host), "member1 original jwtSecret": jwtOf(t, m1)}

	proxyAddr := fmt.Sprintf("https://%s:8080", host.NodeIP)
	if r := run("init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", proxyAddr, "--timeout", "5m"); r.code != 0 {
		t.Fatalf("init-host: exit %d\n%s", r.code, r.stderr)
	}
	if r := outs[0].out; !strings.Contains(r, "capped at 7") {
		t.Fatalf("no cap warning at -v=10 --vmodule=*=10:\n%s", tail(r, 20))
	}
	if r := run("join", "--context", "member1", "--host-context", "host", "--timeout", "3m"); r.code != 0 {
		t.Fatalf("join: exit %d\n%s", r.code, r.stderr)
	}
	run("init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", proxyAddr, "--timeout", "5m")
	run("join", "--context", "member1", "--host-context", "host", "--timeout", "3m", "-o", "json")
	run("join", "--context", "member1", "--host-context", "host", "--dry-run=server", "-o", "yaml")
	run("status", "--host-context", "host", "--context", "member1")
	run("status", "--host-context", "host", "--context", "member1", "-o", "json")
	run("status", "--host-context", "host", "-o", "yaml")
	run("render", "agent", "--context", "member1", "--host-context", "host", "--name", "member1")
	run("version")
	run("completion", "bash")
	run("unjoin", "--context", "member1", "--host-context", "host", "--dry-run=server")

	// The secrets that now exist.
	c := clusterObj(t, host, "member1")
	tok, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
	secrets["Cluster token"] = tok
	if kc, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig"); kc != "" {
		raw, _ := base64.StdEncoding.DecodeString(kc)
		for _, line := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), "client-key-data: "); ok && k == "" {
				secrets["Cluster kubeconfig client key"] = v[:min(len(v), 64)]
			}
		}
	}
	caSec, err := kube(t, host).CoreV1().Secrets(fakeks.Namespace).Get(ctx, kubesphere.CASecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secrets["proxy CA key (base64)"] = base64.StdEncoding.EncodeToString(caSec.Data["tls.key"])[:64]
	for _, line := range strings.Split(string(caSec.Data["tls.key"]), "\n") {
		if len(line) >= 40 && !strings.HasPrefix(line, "-----") {
			secrets["proxy CA key (PEM)"] = line
			break
		}
	}
	agentSec, err := kube(t, m1).CoreV1().Secrets(fakeks.Namespace).Get(ctx, "cluster-agent-token", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range agentSec.Data {
		if len(v) >= 8 {
			secrets["agent token Secret key "+k] = strings.TrimSpace(string(v))
		}
	}

	// The long-running modes, briefly: a standby proxy (a Lease held by someone else keeps it
	// from touching the Clusters the host's proxy serves) and a second agent of member1.
	holder, dur := "e2e-holder", int32(3600)
	now := metav1.NewMicroTime(time.Now())
	if _, err := kube(t, host).CoordinationV1().Leases(fakeks.Namespace).Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "ks-mc-proxy", Namespace: fakeks.Namespace},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, AcquireTime: &now, RenewTime: &now},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	port := freeTCPPort(t, host.NodeIP)
	pp := startKSMC(t, nil, append([]string{"proxy", "--kubeconfig", s.Kubeconfig, "--context", "host",
		"--bind-address", host.NodeIP, "--port", fmt.Sprint(port), "--leader-elect", "--drain-timeout", "1s"}, loud...)...)
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	ap := startKSMC(t, nil, append([]string{"agent", "--kubeconfig", s.Kubeconfig, "--context", "member1", "--name", "member1",
		"--token-file", tokFile, "--proxy-server", proxyAddr, "--ca-cert-hash", caSec.Annotations["ks-mc.io/ca-cert-hash"],
		"--kubesphere-service", m1.NodeIP + ":1"}, loud...)...)
	eventually(t, time.Minute, "the extra agent connects", func() error {
		if !strings.Contains(ap.output(), "connected to proxy") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	eventually(t, time.Minute, "the standby proxy up", func() error {
		if !strings.Contains(pp.output(), "ks-mc proxy listening") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	pp.term()
	ap.term()
	outs = append(outs, named{"proxy", pp.output()}, named{"agent", ap.output()})

	for what, secret := range secrets {
		if len(secret) < 8 {
			t.Fatalf("%s: implausible secret (len %d)", what, len(secret))
		}
		for _, o := range outs {
			if strings.Contains(o.out, secret) {
				// Never print the output: it holds the secret.
				t.Errorf("the %s appears in the output of %q", what, o.what)
			}
		}
	}
	t.Logf("%d commands checked for %d secrets", len(outs), len(secrets))
	// unjoin, checked on its own.
	n := len(outs)
	if r := run("unjoin", "--context", "member1", "--host-context", "host", "--timeout", "2m"); r.code != 0 {
		t.Fatalf("unjoin: exit %d\n%s", r.code, r.stderr)
	}
	for what, secret := range secrets {
		if strings.Contains(outs[n].out, secret) {
			t.Errorf("the %s appears in the output of unjoin", what)
		}
	}
}
