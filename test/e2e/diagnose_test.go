//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// diagCheck is one check of "diagnose -o json".
type diagCheck struct {
	ID       string   `json:"id"`
	Status   string   `json:"status"`
	Subject  string   `json:"subject"`
	Summary  string   `json:"summary"`
	Evidence []string `json:"evidence"`
	Sources  []string `json:"sources"`
	Fix      *struct {
		Text    string `json:"text"`
		Command string `json:"command"`
		See     string `json:"see"`
	} `json:"fix"`
}

type diagReport struct {
	Checks []diagCheck `json:"checks"`
}

func (r diagReport) get(id, subject string) *diagCheck {
	for i := range r.Checks {
		if r.Checks[i].ID == id && r.Checks[i].Subject == subject {
			return &r.Checks[i]
		}
	}
	return nil
}

func (r diagReport) failing() []string {
	var out []string
	for _, c := range r.Checks {
		if c.Status == "fail" {
			out = append(out, c.ID+" "+c.Subject+": "+c.Summary)
		}
	}
	return out
}

type diagnoser struct {
	t    *testing.T
	s    *sandbox.Sandbox
	outs *outputs
	args []string
}

func (d *diagnoser) run(extra ...string) (result, diagReport) {
	d.t.Helper()
	r := d.outs.add(ksmc(d.t, d.s, append(append(append([]string{}, d.args...), "-o", "json"), extra...)...))
	var rep diagReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		d.t.Fatalf("diagnose -o json: %v\n%s", err, r)
	}
	return r, rep
}

// until re-runs diagnose until check id of subject has status want (controllers and the heartbeat
// need a few seconds to see a change), and returns that report.
func (d *diagnoser) until(id, subject, want string) (result, diagReport) {
	d.t.Helper()
	var r result
	var rep diagReport
	eventually(d.t, 90*time.Second, fmt.Sprintf("%s %s %s", id, subject, want), func() error {
		r, rep = d.run()
		c := rep.get(id, subject)
		if c == nil {
			return fmt.Errorf("no check %s for %s", id, subject)
		}
		if c.Status != want {
			return fmt.Errorf("%s is %s: %s %v", id, c.Status, c.Summary, c.Evidence)
		}
		return nil
	})
	return r, rep
}

// healthy waits until diagnose passes (exit 0, no check fails).
func (d *diagnoser) healthy() diagReport {
	d.t.Helper()
	var rep diagReport
	eventually(d.t, 120*time.Second, "a healthy fleet", func() error {
		var r result
		r, rep = d.run()
		if r.code != 0 || len(rep.failing()) > 0 {
			return fmt.Errorf("exit %d, failing %v", r.code, rep.failing())
		}
		return nil
	})
	return rep
}

// mustStayOK asserts that the given checks are ok.
func mustStayOK(t *testing.T, rep diagReport, pairs ...string) {
	t.Helper()
	for i := 0; i+1 < len(pairs); i += 2 {
		c := rep.get(pairs[i], pairs[i+1])
		if c == nil || c.Status != "ok" {
			t.Errorf("%s %s should stay ok: %+v", pairs[i], pairs[i+1], c)
		}
	}
}

func wantFail(t *testing.T, r result, rep diagReport, id, subject string, summaryHas, fixHas string) *diagCheck {
	t.Helper()
	if r.code != 1 {
		t.Errorf("diagnose exit code %d, want 1", r.code)
	}
	c := rep.get(id, subject)
	if c == nil || c.Status != "fail" {
		t.Fatalf("%s %s: want fail, got %+v\nfailing: %v", id, subject, c, rep.failing())
	}
	if summaryHas != "" && !strings.Contains(c.Summary+strings.Join(c.Evidence, " "), summaryHas) {
		t.Errorf("%s: cause lacks %q: %s %v", id, summaryHas, c.Summary, c.Evidence)
	}
	if fixHas != "" && (c.Fix == nil || !strings.Contains(c.Fix.Text, fixHas)) {
		t.Errorf("%s: fix lacks %q: %+v", id, fixHas, c.Fix)
	}
	return c
}

func patchMerge(t *testing.T, s *sandbox.Sandbox, args ...string) {
	t.Helper()
	if r := kubectl(t, s, append([]string{"patch", "--type=merge"}, args...)...); r.code != 0 {
		t.Fatalf("kubectl patch %v: %s", args, r)
	}
}

// TestDiagnose plants every fault a user meets on a fleet joined with --tunnel=ks-mc, one at a
// time, and checks that diagnose names it with its cause and fix while the rest stays ok.
func TestDiagnose(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1", "member2"}})
	host, m1 := s.Cluster("host"), s.Cluster("member1")
	ctx := context.Background()
	outs := &outputs{}
	proxyAddr := fmt.Sprintf("https://%s:8080", host.NodeIP)
	if r := outs.add(ksmc(t, s, "init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", proxyAddr, "--timeout", "5m")); r.code != 0 {
		t.Fatalf("init-host: %s", r)
	}
	for _, m := range []string{"member1", "member2"} {
		if r := outs.add(ksmc(t, s, "join", "--context", m, "--host-context", "host", "--timeout", "5m")); r.code != 0 {
			t.Fatalf("join %s: %s", m, r)
		}
	}
	d := &diagnoser{t: t, s: s, outs: outs, args: []string{"diagnose", "--host-context", "host", "--context", "member1", "--context", "member2"}}
	const c1, c2 = "cluster/member1", "cluster/member2"
	rejoin := func() {
		t.Helper()
		if r := outs.add(ksmc(t, s, "join", "--context", "member1", "--host-context", "host", "--timeout", "3m")); r.code != 0 {
			t.Fatalf("re-join member1: %s", r)
		}
	}
	var secrets []string
	addSecret := func(s string) { secrets = append(secrets, s) }
	addSecret(jwtOf(t, host))

	t.Run("healthy", func(t *testing.T) {
		rep := d.healthy()
		tun := rep.get("cluster.tunnel", c1)
		if tun == nil || tun.Status != "ok" || !strings.Contains(strings.Join(tun.Sources, ","), "heartbeat") {
			t.Errorf("tunnel check: %+v", tun)
		}
		for _, id := range []string{"member.jwtSecret", "member.accessTokenMaxAge", "member.uid", "member.agent", "member.clockSkew", "cluster.certificate"} {
			mustStayOK(t, rep, id, c1, id, c2)
		}
		// The text form at the highest -v, and the host-only form.
		if r := outs.add(ksmc(t, s, "diagnose", "--host-context", "host", "--all-contexts", "-v=9")); r.code != 0 || !strings.Contains(r.stdout, "cluster.tunnel") {
			t.Errorf("diagnose --all-contexts -v=9: %s", r)
		}
		r := outs.add(ksmc(t, s, "diagnose", "--host-context", "host", "-o", "json"))
		var hostOnly diagReport
		_ = json.Unmarshal([]byte(r.stdout), &hostOnly)
		if c := hostOnly.get("cluster.memberContext", c1); r.code != 0 || c == nil || c.Status != "skip" || c.Fix == nil || !strings.Contains(c.Fix.Text, "--context") {
			t.Errorf("host-only diagnose should skip the member side and name --context: %+v\n%s", c, r)
		}
		if r := outs.add(ksmc(t, s, "status", "--host-context", "host")); r.code != 0 || !strings.Contains(r.stdout, "LIVE") || !strings.Contains(r.stdout, "live (") {
			t.Errorf("status has no live probe column: %s", r)
		}
	})

	t.Run("jwtSecret changed on the member", func(t *testing.T) {
		patchMerge(t, s, "--context", "member1", "-n", fakeks.Namespace, "clusterconfiguration", fakeks.CCName, "-p", `{"spec":{"authentication":{"jwtSecret":"changedByHandOnTheMember0123456"}}}`)
		addSecret("changedByHandOnTheMember0123456")
		r, rep := d.until("member.jwtSecret", c1, "fail")
		wantFail(t, r, rep, "member.jwtSecret", c1, "differs", "kubectl ks-mc join --context member1 --host-context host")
		mustStayOK(t, rep, "cluster.tunnel", c1, "member.jwtSecret", c2, "member.accessTokenMaxAge", c1, "member.agent", c1)
		rejoin()
		d.healthy()
	})

	t.Run("accessTokenMaxAge 1h on the member", func(t *testing.T) {
		setTokenMaxAge(t, m1, "1h")
		r, rep := d.until("member.accessTokenMaxAge", c1, "fail")
		wantFail(t, r, rep, "member.accessTokenMaxAge", c1, "1h0m0s", "accessTokenMaxAge: 0")
		mustStayOK(t, rep, "cluster.tunnel", c1, "member.jwtSecret", c1, "member.agent", c1)
		setTokenMaxAge(t, m1, "0")
		d.healthy()
	})

	t.Run("agent token wrong", func(t *testing.T) {
		wrong := "wrongAgentTokenPlantedByHand0123456789abcdef"
		addSecret(wrong)
		sec, err := kube(t, m1).CoreV1().Secrets(fakeks.Namespace).Get(ctx, "cluster-agent-token", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		good := string(sec.Data["token"])
		patchMerge(t, s, "--context", "member1", "-n", fakeks.Namespace, "secret", "cluster-agent-token", "-p", `{"stringData":{"token":"`+wrong+`"}}`)
		if r := kubectl(t, s, "--context", "member1", "-n", fakeks.Namespace, "rollout", "restart", "deployment/cluster-agent"); r.code != 0 {
			t.Fatal(r)
		}
		r, rep := d.until("cluster.tunnel", c1, "fail")
		wantFail(t, r, rep, "member.agent", c1, "token", "kubectl ks-mc join --context member1")
		tun := rep.get("cluster.tunnel", c1)
		if tun.Fix == nil || tun.Fix.See != "member.agent" {
			t.Errorf("the tunnel check should point at member.agent: %+v", tun)
		}
		mustStayOK(t, rep, "member.jwtSecret", c1, "member.uid", c1, "cluster.tunnel", c2)
		// The sandbox's pods do not see Secret updates (a kubelet would): put the token back and restart.
		patchMerge(t, s, "--context", "member1", "-n", fakeks.Namespace, "secret", "cluster-agent-token", "-p", `{"stringData":{"token":"`+good+`"}}`)
		if r := kubectl(t, s, "--context", "member1", "-n", fakeks.Namespace, "rollout", "restart", "deployment/cluster-agent"); r.code != 0 {
			t.Fatal(r)
		}
		d.healthy()
	})

	t.Run("proxy address with the wrong port", func(t *testing.T) {
		wrongAddr := fmt.Sprintf("https://%s:8081", host.NodeIP)
		patchMerge(t, s, "--context", "host", "-n", fakeks.Namespace, "clusterconfiguration", fakeks.CCName, "-p", `{"spec":{"multicluster":{"proxyPublishAddress":"`+wrongAddr+`"}}}`)
		r, rep := d.until("host.proxyPublishAddress", "host", "fail")
		wantFail(t, r, rep, "host.proxyPublishAddress", "host", "8081", "--proxy-publish-address")
		mustStayOK(t, rep, "member.jwtSecret", c1, "member.uid", c1, "host.role", "host", "host.tower", "host")
		// A faulty fleet's bundle holds no secret.
		bundle := filepath.Join(t.TempDir(), "diag.tar.gz")
		if r := outs.add(ksmc(t, s, append(append([]string{}, d.args...), "--bundle", bundle, "-v=7")...)); r.code != 1 {
			t.Errorf("diagnose --bundle: %s", r)
		}
		checkBundle(t, bundle, secretsOf(t, s, secrets))
		patchMerge(t, s, "--context", "host", "-n", fakeks.Namespace, "clusterconfiguration", fakeks.CCName, "-p", `{"spec":{"multicluster":{"proxyPublishAddress":"`+proxyAddr+`"}}}`)
		d.healthy()
	})

	t.Run("agent scaled to 0 while the Cluster says Ready", func(t *testing.T) {
		if r := kubectl(t, s, "--context", "member1", "-n", fakeks.Namespace, "scale", "deployment/cluster-agent", "--replicas=0"); r.code != 0 {
			t.Fatal(r)
		}
		// What a stale Tower leaves behind: the conditions say connected.
		setConditionsTrue(t, s, "member1")
		r, rep := d.until("cluster.tunnel", c1, "fail")
		wantFail(t, r, rep, "cluster.tunnel", c1, "scaled to 0", "--replicas=1")
		mustStayOK(t, rep, "member.jwtSecret", c1, "member.agent", c1, "cluster.tunnel", c2, "member.agent", c2)

		if r := kubectl(t, s, "--context", "member1", "-n", fakeks.Namespace, "scale", "deployment/cluster-agent", "--replicas=1"); r.code != 0 {
			t.Fatal(r)
		}
		d.healthy()
	})

	t.Run("expired client certificate and Cluster stuck Terminating", func(t *testing.T) {
		// A direct-connection Cluster whose kubeconfig's client certificate expired (kubeadm certificates
		// after a year), then deleted while a finalizer cannot finish.
		kc := expiredKubeconfig(t, s.Cluster("member2").Server)
		obj := map[string]any{"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster",
			"metadata": map[string]any{"name": "legacy", "finalizers": []any{"e2e.ks-mc.io/hold"}},
			"spec": map[string]any{"joinFederation": true, "connection": map[string]any{"type": "direct",
				"kubeconfig": base64.StdEncoding.EncodeToString(kc)}}}
		if _, err := dyn(t, host).Resource(fakeks.ClusterGVR).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		r, rep := d.until("cluster.certificate", "cluster/legacy", "fail")
		wantFail(t, r, rep, "cluster.certificate", "cluster/legacy", "expired", "")
		mustStayOK(t, rep, "cluster.certificate", c1, "cluster.tunnel", c1, "cluster.terminating", "cluster/legacy")
		if err := dyn(t, host).Resource(fakeks.ClusterGVR).Delete(ctx, "legacy", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		r, rep = d.until("cluster.terminating", "cluster/legacy", "fail")
		wantFail(t, r, rep, "cluster.terminating", "cluster/legacy", "e2e.ks-mc.io/hold", "unjoin --name legacy --host-context host --force")
		mustStayOK(t, rep, "cluster.terminating", c1, "cluster.tunnel", c1, "cluster.tunnel", c2)
		bundle := filepath.Join(t.TempDir(), "diag.tar.gz")
		if r := outs.add(ksmc(t, s, "diagnose", "--host-context", "host", "--all-contexts", "--bundle", bundle)); r.code != 1 {
			t.Errorf("diagnose --bundle: %s", r)
		}
		checkBundle(t, bundle, secretsOf(t, s, secrets))
		patchMerge(t, s, "--context", "host", "cluster", "legacy", "-p", `{"metadata":{"finalizers":null}}`)
		d.healthy()
	})

	// Last, because it cannot be undone in place: once status.uid names another kube-system,
	// KubeSphere 3.4's Cluster webhook (the stand-in's fakeks/webhook.go) refuses every update of the
	// Cluster, KubeSphere's own status refresh included. The way out is the one diagnose advises.
	t.Run("member reinstalled", func(t *testing.T) {
		patchMerge(t, s, "--context", "host", "cluster", "member1", "-p", `{"status":{"uid":"00000000-0000-0000-0000-00000000dead"}}`)
		r, rep := d.until("member.uid", c1, "fail")
		wantFail(t, r, rep, "member.uid", c1, "reinstalled", "unjoin --name member1")
		mustStayOK(t, rep, "member.jwtSecret", c1, "member.uid", c2, "cluster.tunnel", c2)
		// The advised fix, then a fresh join: the fleet is healthy again.
		if r := outs.add(ksmc(t, s, "unjoin", "--name", "member1", "--host-context", "host", "--context", "member1", "--force", "--timeout", "3m")); r.code != 0 {
			t.Fatalf("unjoin --force: %s", r)
		}
		rejoin()
		d.healthy()
	})

	for _, sec := range secretsOf(t, s, secrets) {
		outs.assertNoSecret(t, "secret", sec)
	}
}

// TestDiagnoseTower: a fleet joined with --tunnel=tower (the host keeps KubeSphere's Tower) is
// healthy, and a dead agent is told from the conditions.
func TestDiagnoseTower(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1"}})
	host := s.Cluster("host")
	ctx := context.Background()
	if err := host.SetKnobs(ctx, map[string]string{fakeks.KnobLoadBalancer: "true"}); err != nil {
		t.Fatal(err)
	}
	outs := &outputs{}
	if r := outs.add(ksmc(t, s, "init-host", "--context", "host", "--timeout", "3m")); r.code != 0 {
		t.Fatalf("init-host: %s", r)
	}
	if r := outs.add(ksmc(t, s, "join", "--context", "member1", "--host-context", "host", "--tunnel=tower", "--timeout", "3m")); r.code != 0 {
		t.Fatalf("join: %s", r)
	}
	d := &diagnoser{t: t, s: s, outs: outs, args: []string{"diagnose", "--host-context", "host", "--context", "member1"}}
	rep := d.healthy()
	mustStayOK(t, rep, "cluster.tunnel", "cluster/member1", "member.agent", "cluster/member1", "host.tower", "host")
	if r := kubectl(t, s, "--context", "member1", "-n", fakeks.Namespace, "scale", "deployment/cluster-agent", "--replicas=0"); r.code != 0 {
		t.Fatal(r)
	}
	r, rep := d.until("cluster.tunnel", "cluster/member1", "fail")
	wantFail(t, r, rep, "cluster.tunnel", "cluster/member1", "scaled to 0", "--replicas=1")
	mustStayOK(t, rep, "member.jwtSecret", "cluster/member1", "member.uid", "cluster/member1")
	outs.assertNoSecret(t, "host jwtSecret", jwtOf(t, host))
	c := clusterObj(t, host, "member1")
	tok, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
	outs.assertNoSecret(t, "agent token", tok)
}

// setTokenMaxAge edits the member's kubesphere-config by hand (what a user does; the installer
// only re-renders it when the ClusterConfiguration changes).
func setTokenMaxAge(t *testing.T, c *sandbox.Cluster, v string) {
	t.Helper()
	ctx := context.Background()
	cms := kube(t, c).CoreV1().ConfigMaps(fakeks.Namespace)
	cm, err := cms.Get(ctx, fakeks.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data[fakeks.ConfigKey]), &cfg); err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedField(cfg, v, "authentication", "oauthOptions", "accessTokenMaxAge")
	b, _ := yaml.Marshal(cfg)
	cm.Data[fakeks.ConfigKey] = string(b)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func setConditionsTrue(t *testing.T, s *sandbox.Sandbox, name string) {
	t.Helper()
	c := clusterObj(t, s.Cluster("host"), name)
	conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	for _, raw := range conds {
		if m, ok := raw.(map[string]any); ok && (m["type"] == "AgentAvailable" || m["type"] == "Ready") {
			m["status"] = "True"
		}
	}
	p, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
	_, _ = dyn(t, s.Cluster("host")).Resource(fakeks.ClusterGVR).Patch(context.Background(), name, types.MergePatchType, p, metav1.PatchOptions{})
}

// secretsOf lists the sandbox's secrets: every jwtSecret, the Clusters' tokens and kubeconfigs'
// keys, the agents' tokens, plus the planted ones.
func secretsOf(t *testing.T, s *sandbox.Sandbox, planted []string) []string {
	t.Helper()
	out := append([]string{}, planted...)
	for _, c := range s.Clusters {
		out = append(out, jwtOf(t, c))
		if sec, err := kube(t, c).CoreV1().Secrets(fakeks.Namespace).Get(context.Background(), "cluster-agent-token", metav1.GetOptions{}); err == nil {
			out = append(out, string(sec.Data["token"]))
		}
	}
	list, err := dyn(t, s.Cluster("host")).Resource(fakeks.ClusterGVR).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list.Items {
		tok, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
		out = append(out, tok)
		kc, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
		raw, _ := base64.StdEncoding.DecodeString(kc)
		var cfg map[string]any
		_ = yaml.Unmarshal(raw, &cfg)
		users, _, _ := unstructured.NestedSlice(cfg, "users")
		for _, u := range users {
			if m, ok := u.(map[string]any); ok {
				key, _, _ := unstructured.NestedString(m, "user", "client-key-data")
				out = append(out, key)
				if b, err := base64.StdEncoding.DecodeString(key); err == nil {
					// The PEM body's first line of base64 is enough to spot a leak.
					lines := strings.Split(string(b), "\n")
					if len(lines) > 1 {
						out = append(out, lines[1])
					}
				}
			}
		}
	}
	var keep []string
	for _, s := range out {
		if len(s) >= 8 {
			keep = append(keep, s)
		}
	}
	return keep
}

// checkBundle decompresses the bundle and greps every file for every secret.
func checkBundle(t *testing.T, path string, secrets []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("bundle: %v", err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	var all bytes.Buffer
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		b, _ := io.ReadAll(tr)
		all.Write(b)
		all.WriteByte('\n')
		for _, sec := range secrets {
			if bytes.Contains(b, []byte(sec)) {
				t.Errorf("bundle file %s holds a secret (%d chars)", h.Name, len(sec))
			}
		}
	}
	joined := strings.Join(names, " ")
	for _, want := range []string{"report.json", "report.txt", "host/clusterconfiguration.yaml", "host/kubesphere-config.yaml", "host/clusters/member1.yaml", "host/deployment-tower.yaml", "host/events.yaml"} {
		if !strings.Contains(joined, want) {
			t.Errorf("bundle lacks %s: %v", want, names)
		}
	}
	if !strings.Contains(all.String(), "<redacted>") {
		t.Error("bundle shows no redaction at all")
	}
}

// expiredKubeconfig is a kubeconfig for server whose client certificate expired a day ago.
func expiredKubeconfig(t *testing.T, server string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "kubernetes-admin"},
		NotBefore: time.Now().Add(-366 * 24 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	cfg := map[string]any{"apiVersion": "v1", "kind": "Config", "current-context": "legacy",
		"clusters": []any{map[string]any{"name": "legacy", "cluster": map[string]any{"server": server, "insecure-skip-tls-verify": true}}},
		"users": []any{map[string]any{"name": "admin", "user": map[string]any{
			"client-certificate-data": base64.StdEncoding.EncodeToString(certPEM), "client-key-data": base64.StdEncoding.EncodeToString(keyPEM)}}},
		"contexts": []any{map[string]any{"name": "legacy", "context": map[string]any{"cluster": "legacy", "user": "admin"}}}}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
