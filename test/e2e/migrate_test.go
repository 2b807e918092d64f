//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// TestMigrateTower: a fleet (host + 2 members) joined with --tunnel=tower, then init-host
// --tunnel=ks-mc, then migrate --all-contexts, with a request loop against each member through
// the host (the Cluster's kubeconfig, the way KubeSphere's apiserver reaches members) running the
// whole time. The members run Tower agents for real (test/toweragent as the sandbox's Tower
// image). Failed requests and the longest gap between answered requests are counted per phase
// and logged; no request may fail during migrate, and at init-host only inside the proxy
// replacement window (the failures of a member are one run that ends at its first answer through
// the ks-mc proxy). A re-run reports "already migrated" and changes nothing, a dry run changes
// nothing, and a member whose ks-mc agent cannot serve stays on its Tower agent with the reason.
func TestMigrateTower(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"host", "member1", "member2"}})
	if s.TowerAgentBinary == "" {
		t.Fatal("the sandbox runs no Tower agents (test/toweragent's tower-agent could not be built)")
	}
	host := s.Cluster("host")
	ctx := context.Background()
	if err := host.SetKnobs(ctx, map[string]string{fakeks.KnobLoadBalancer: "true", fakeks.KnobInstallerDelay: "500ms"}); err != nil {
		t.Fatal(err)
	}
	members := []string{"member1", "member2"}
	for _, m := range members {
		if err := s.Cluster(m).SetKnobs(ctx, map[string]string{fakeks.KnobInstallerDelay: "500ms"}); err != nil {
			t.Fatal(err)
		}
	}
	var outs outputs
	if r := outs.add(ksmc(t, s, "init-host", "--context", "host", "--timeout", "3m")); r.code != 0 {
		t.Fatalf("init-host (Tower): %s", r)
	}
	for _, m := range members {
		if r := outs.add(ksmc(t, s, "join", "--context", m, "--host-context", "host", "--tunnel=tower", "--timeout", "3m")); r.code != 0 {
			t.Fatalf("join %s --tunnel=tower: %s", m, r)
		}
	}

	loops := map[string]*requestLoop{}
	for _, m := range members {
		l := startRequestLoop(t, s, host, m)
		loops[m] = l
		t.Cleanup(l.stop)
	}
	var switchStart time.Time
	// The figures are logged whatever happens (they go into the lead's note).
	t.Cleanup(func() {
		for _, m := range members {
			l := loops[m]
			for _, ph := range l.phases() {
				st := l.stats(ph)
				t.Logf("figures %s phase %-16s requests %4d failed %3d longest gap %s", m, ph, st.total, st.failed, st.longestGap.Round(time.Millisecond))
			}
			if !switchStart.IsZero() {
				w := l.window(switchStart)
				t.Logf("figures %s proxy-replacement window: %d failed requests in %s (from the first failure to the first answer through the ks-mc proxy)", m, w.failed, w.length.Round(time.Millisecond))
				if d, ok := towerAgentOutage(s, m, switchStart); ok {
					t.Logf("figures %s Tower agent without a session at init-host: %s (its own log: from the first connection error to Connected, through the ks-mc proxy)", m, d.Round(time.Millisecond))
				}
			}
		}
	})
	for _, m := range members {
		loops[m].waitAnswered(t, time.Minute)
	}
	phase := func(name string) {
		for _, l := range loops {
			l.setPhase(name)
		}
	}
	phase("tower")
	// The Tower phase gets its own requests (the loop's figures need a baseline before the switch).
	for _, m := range members {
		loops[m].waitAnsweredInPhase(t, "tower", 20, time.Minute)
	}
	// status says every member is on a Tower agent, and weaker.
	if r := outs.add(ksmc(t, s, "status", "--host-context", "host", "-o", "json")); r.code != 0 || strings.Count(r.stdout, `"protocol": "tower"`) != 2 || !strings.Contains(r.stdout, "migrate --host-context host") {
		t.Errorf("status before the switch: %s", r)
	}

	// 1. The host switches to the ks-mc proxy: the Tower agents stay connected through it.
	phase("init-host")
	switchStart = time.Now()
	r := outs.add(ksmc(t, s, "init-host", "--context", "host", "--tunnel=ks-mc", "--timeout", "5m"))
	if r.code != 0 {
		t.Fatalf("init-host --tunnel=ks-mc: %s", r)
	}
	if !strings.Contains(r.stderr, "stay connected through the ks-mc proxy") || strings.Contains(r.stderr, "--force") {
		t.Errorf("init-host does not say the Tower members stay connected:\n%s", r.stderr)
	}
	phase("after-init-host")
	for _, m := range members {
		loops[m].waitAnsweredSince(t, switchStart, 5*time.Minute)
	}
	for _, m := range members {
		eventually(t, 2*time.Minute, m+" served through the ks-mc proxy over the Tower protocol", func() error {
			if p := leaseProtocol(t, host, m); p != "tower" {
				return fmt.Errorf("heartbeat protocol %q", p)
			}
			return nil
		})
	}
	if r := outs.add(ksmc(t, s, "diagnose", "--host-context", "host", "--all-contexts", "-o", "json")); !strings.Contains(r.stdout, `"cluster.agentProtocol"`) || !strings.Contains(r.stdout, "migrate --host-context host --context member1") {
		t.Errorf("diagnose does not flag the Tower members: %s", r)
	}

	// 2. A dry run changes nothing.
	before := fleetSnapshot(t, s, members)
	for _, dry := range []string{"client", "server"} {
		r := outs.add(ksmc(t, s, "migrate", "--host-context", "host", "--all-contexts", "--dry-run="+dry, "-o", "json"))
		if r.code != 0 || strings.Count(r.stdout, `"result": "would-migrate"`) != 2 || !strings.Contains(r.stdout, `"changed": false`) {
			t.Errorf("migrate --dry-run=%s: %s", dry, r)
		}
	}
	if after := fleetSnapshot(t, s, members); after != before {
		t.Errorf("a dry run changed the fleet:\nbefore %s\nafter  %s", before, after)
	}

	// 3. A member whose ks-mc agent cannot serve (an image the sandbox does not run: its pod is
	// "Running" but no agent ever connects) stays on its Tower agent, with the reason.
	phase("migrate-failing")
	r = outs.add(ksmc(t, s, "migrate", "--host-context", "host", "--context", "member2", "--agent-image", "example.invalid/no-agent:0", "--timeout", "45s"))
	if r.code == 0 || !strings.Contains(r.stdout, "member2 (context member2): failed") || !strings.Contains(r.stderr, "stay on their Tower agent") ||
		!strings.Contains(r.stderr, "timed out") {
		t.Errorf("a failing member: %s", r)
	}
	if !deploymentExists(t, s.Cluster("member2"), kubesphere.AgentName) || deploymentExists(t, s.Cluster("member2"), kubesphere.MigratedAgentName) {
		t.Error("the failed member is not left on its Tower agent alone")
	}
	if a := clusterObj(t, host, "member2").GetAnnotations()[kubesphere.AgentProtocolAnnotation]; a != "" {
		t.Errorf("the failed member's Cluster is annotated %q", a)
	}

	// 4. migrate --all-contexts, one member at a time.
	phase("migrate")
	r = outs.add(ksmc(t, s, "migrate", "--host-context", "host", "--all-contexts", "--timeout", "3m", "-o", "json"))
	if r.code != 0 {
		t.Fatalf("migrate --all-contexts: %s", r)
	}
	var res struct {
		Changed bool `json:"changed"`
		Members []struct {
			Context, Name, Result, Protocol, Elapsed string
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("migrate -o json: %v\n%s", err, r.stdout)
	}
	for _, m := range res.Members {
		t.Logf("figures %s migrate took %s (%s)", m.Context, m.Elapsed, m.Result)
	}
	if !res.Changed || len(res.Members) != 2 {
		t.Errorf("migrate result: %s", r.stdout)
	}
	for _, m := range res.Members {
		if m.Result != "migrated" || m.Protocol != "ks-mc" {
			t.Errorf("member %s: %+v", m.Context, m)
		}
	}
	phase("after-migrate")
	for _, m := range members {
		c := s.Cluster(m)
		if deploymentExists(t, c, kubesphere.AgentName) || !deploymentExists(t, c, kubesphere.MigratedAgentName) {
			t.Errorf("%s: the Tower agent is still there, or no ks-mc agent", m)
		}
		if a := clusterObj(t, host, m).GetAnnotations(); a[kubesphere.AgentProtocolAnnotation] != "ks-mc" || a[kubesphere.AgentDeploymentAnnotation] != kubesphere.MigratedAgentName {
			t.Errorf("%s: Cluster annotations %v", m, a)
		}
		if p := leaseProtocol(t, host, m); p != "ks-mc" {
			t.Errorf("%s: heartbeat protocol %q after migrate", m, p)
		}
		loops[m].waitAnsweredSince(t, time.Now(), time.Minute)
	}

	// 5. A re-run: already migrated, nothing changes.
	before = fleetSnapshot(t, s, members)
	r = outs.add(ksmc(t, s, "migrate", "--host-context", "host", "--all-contexts"))
	if r.code != 0 || strings.Count(r.stdout, "already-migrated") != 2 || !strings.Contains(r.stdout, "0 migrated, 2 already migrated") {
		t.Errorf("re-run: %s", r)
	}
	if after := fleetSnapshot(t, s, members); after != before {
		t.Errorf("a re-run changed the fleet:\nbefore %s\nafter  %s", before, after)
	}
	// join understands a migrated member: a re-run changes nothing and keeps one agent.
	if r := outs.add(ksmc(t, s, "join", "--context", "member1", "--host-context", "host", "-o", "json")); r.code != 0 || strings.Contains(r.stdout, `"changed": true`) {
		t.Errorf("join of a migrated member: %s", r)
	}
	if deploymentExists(t, s.Cluster("member1"), kubesphere.AgentName) {
		t.Error("join of a migrated member rendered a second agent")
	}
	if r := outs.add(ksmc(t, s, "status", "--host-context", "host", "-o", "json")); r.code != 0 || strings.Count(r.stdout, `"protocol": "ks-mc"`) != 2 || strings.Contains(r.stdout, `"weaker"`) {
		t.Errorf("status after migrate: %s", r)
	}
	phase("end")
	for _, l := range loops {
		l.stop()
	}

	// Figures, and the request-loop assertions.
	for _, m := range members {
		l := loops[m]
		if st := l.stats("migrate"); st.failed > 0 || st.total == 0 {
			t.Errorf("%s: %d of %d requests failed during migrate (first: %s)", m, st.failed, st.total, st.firstErr)
		}
		if st := l.stats("migrate-failing"); st.failed > 0 {
			t.Errorf("%s: %d requests failed while a failing member was migrated (first: %s)", m, st.failed, st.firstErr)
		}
		for _, ph := range []string{"tower", "after-migrate"} {
			if st := l.stats(ph); st.failed > 0 {
				t.Errorf("%s: %d requests failed in phase %s (first: %s)", m, st.failed, ph, st.firstErr)
			}
		}
		if w := l.window(switchStart); w.failedAfter > 0 {
			t.Errorf("%s: %d requests failed after the proxy-replacement window (the member was served through the ks-mc proxy already)", m, w.failedAfter)
		}
	}
	outs.assertNoSecret(t, "host jwtSecret", jwtOf(t, host))
	for _, m := range members {
		tok, _, _ := unstructured.NestedString(clusterObj(t, host, m).Object, "spec", "connection", "token")
		outs.assertNoSecret(t, m+" agent token", tok)
	}
}

// leaseProtocol is the protocol the ks-mc proxy's heartbeat Lease names for a cluster.
func leaseProtocol(t *testing.T, host *sandbox.Cluster, name string) string {
	l, err := kube(t, host).CoordinationV1().Leases(kubesphere.Namespace).Get(context.Background(), kubesphere.HeartbeatLeaseName(name), metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return l.Annotations[kubesphere.AgentProtocolAnnotation]
}

func deploymentExists(t *testing.T, c *sandbox.Cluster, name string) bool {
	t.Helper()
	_, err := kube(t, c).AppsV1().Deployments(kubesphere.Namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// fleetSnapshot is what migrate may change: the members' agent Deployments and Secrets
// (resourceVersions) and the Clusters' annotations.
func fleetSnapshot(t *testing.T, s *sandbox.Sandbox, members []string) string {
	t.Helper()
	var parts []string
	for _, m := range members {
		k := kube(t, s.Cluster(m))
		for _, n := range []string{kubesphere.AgentName, kubesphere.MigratedAgentName} {
			d, err := k.AppsV1().Deployments(kubesphere.Namespace).Get(context.Background(), n, metav1.GetOptions{})
			if err == nil {
				parts = append(parts, fmt.Sprintf("%s/deploy/%s@gen%d", m, n, d.Generation))
			}
		}
		if sec, err := k.CoreV1().Secrets(kubesphere.Namespace).Get(context.Background(), kubesphere.AgentTokenSecretName, metav1.GetOptions{}); err == nil {
			parts = append(parts, m+"/secret@"+sec.ResourceVersion)
		}
		ann := clusterObj(t, s.Cluster("host"), m).GetAnnotations()
		parts = append(parts, fmt.Sprintf("%s/cluster:%s=%s,%s=%s", m, kubesphere.AgentProtocolAnnotation, ann[kubesphere.AgentProtocolAnnotation],
			kubesphere.AgentDeploymentAnnotation, ann[kubesphere.AgentDeploymentAnnotation]))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// requestLoop sends GET /api/v1/namespaces/kube-system to a member through the host, the way
// ks-apiserver does: with the kubeconfig the host's proxy wrote into the Cluster (rebuilt when it
// changes, as KubeSphere's cluster client cache does), the Service mc-<name>'s ClusterIP routed to
// the per-cluster listener like kube-proxy would. An answer is a 200 with the member's kube-system.
type requestLoop struct {
	t          *testing.T
	host       *sandbox.Cluster
	name, want string
	hostKube   kubernetes.Interface
	hostDyn    dynamic.Interface
	done       chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup

	mu      sync.Mutex
	phase   string
	samples []sample
}

type sample struct {
	at    time.Time
	phase string
	err   string // "" answered
}

func startRequestLoop(t *testing.T, s *sandbox.Sandbox, host *sandbox.Cluster, member string) *requestLoop {
	ns, err := kube(t, s.Cluster(member)).CoreV1().Namespaces().Get(context.Background(), "kube-system", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := &requestLoop{t: t, host: host, name: member, want: string(ns.UID), done: make(chan struct{}), phase: "start",
		hostKube: kube(t, host), hostDyn: dyn(t, host)}
	l.wg.Add(1)
	go l.run()
	return l
}

func (l *requestLoop) setPhase(p string) { l.mu.Lock(); l.phase = p; l.mu.Unlock() }

func (l *requestLoop) stop() {
	l.stopOnce.Do(func() { close(l.done) })
	l.wg.Wait()
}

func (l *requestLoop) run() {
	defer l.wg.Done()
	var client kubernetes.Interface
	var key string
	for {
		select {
		case <-l.done:
			return
		case <-time.After(200 * time.Millisecond):
		}
		errText := ""
		k, c, err := l.clientFor(key)
		switch {
		case err != nil:
			errText = "client: " + err.Error()
		default:
			if c != nil {
				client, key = c, k
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ns, err := client.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
			cancel()
			switch {
			case err != nil:
				errText = err.Error()
			case string(ns.UID) != l.want:
				errText = "answered by another cluster (kube-system " + string(ns.UID) + ")"
			}
		}
		l.mu.Lock()
		l.samples = append(l.samples, sample{at: time.Now(), phase: l.phase, err: errText})
		l.mu.Unlock()
	}
}

// clientFor returns a new client when the Cluster's kubeconfig (or listener port) changed since
// key, else (key, nil, nil).
func (l *requestLoop) clientFor(key string) (string, kubernetes.Interface, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hk := l.hostKube
	c, err := l.hostDyn.Resource(fakeks.ClusterGVR).Get(ctx, l.name, metav1.GetOptions{})
	if err != nil {
		return "", nil, err
	}
	b64, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
	port, _, _ := unstructured.NestedInt64(c.Object, "spec", "connection", "kubernetesAPIServerPort")
	k := b64 + "/" + strconv.FormatInt(port, 10)
	if k == key {
		return key, nil, nil
	}
	if b64 == "" {
		return "", nil, fmt.Errorf("Cluster %s has no kubeconfig", l.name)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, err
	}
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return "", nil, err
	}
	var clusterIP string
	if svc, err := hk.CoreV1().Services(kubesphere.Namespace).Get(ctx, kubesphere.ServicePrefix+l.name, metav1.GetOptions{}); err == nil {
		clusterIP = svc.Spec.ClusterIP
	}
	for _, cl := range kc.Clusters {
		u, err := url.Parse(cl.Server)
		if err != nil {
			return "", nil, err
		}
		if clusterIP != "" && u.Hostname() == clusterIP {
			// kube-proxy's part: the Service's ClusterIP:6443 is the proxy's per-cluster listener.
			if cl.TLSServerName == "" {
				cl.TLSServerName = clusterIP
			}
			u.Host = net.JoinHostPort(l.host.NodeIP, strconv.FormatInt(port, 10))
			cl.Server = u.String()
		}
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return "", nil, err
	}
	rc.Timeout = 5 * time.Second
	mc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return "", nil, err
	}
	return k, mc, nil
}

// waitAnswered waits for an answered request.
func (l *requestLoop) waitAnswered(t *testing.T, timeout time.Duration) {
	t.Helper()
	l.waitAnsweredSince(t, time.Time{}, timeout)
}

func (l *requestLoop) waitAnsweredSince(t *testing.T, since time.Time, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "a request answered by "+l.name+" through the host", func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		last := ""
		for i := len(l.samples) - 1; i >= 0 && l.samples[i].at.After(since); i-- {
			if l.samples[i].err == "" {
				return nil
			}
			if last == "" {
				last = l.samples[i].err
			}
		}
		return fmt.Errorf("no answer yet (last error: %s)", last)
	})
}

// waitAnsweredInPhase waits until n requests of phase were answered.
func (l *requestLoop) waitAnsweredInPhase(t *testing.T, phase string, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d requests answered by %s in phase %s", n, l.name, phase), func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		got := 0
		for _, s := range l.samples {
			if s.phase == phase && s.err == "" {
				got++
			}
		}
		if got < n {
			return fmt.Errorf("%d answered", got)
		}
		return nil
	})
}

type loopStats struct {
	total, failed int
	longestGap    time.Duration
	firstErr      string
}

// phases lists the phases in the order they were seen.
func (l *requestLoop) phases() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, s := range l.samples {
		if !seen[s.phase] {
			seen[s.phase] = true
			out = append(out, s.phase)
		}
	}
	return out
}

// stats counts a phase's requests and failures, and the longest time between two answered
// requests (or from the phase's first request to its first answer) within it.
func (l *requestLoop) stats(phase string) loopStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	var st loopStats
	var lastOK time.Time
	for _, s := range l.samples {
		if s.phase != phase {
			continue
		}
		st.total++
		if lastOK.IsZero() {
			lastOK = s.at
		}
		if s.err != "" {
			st.failed++
			if st.firstErr == "" {
				st.firstErr = s.err
			}
			continue
		}
		st.longestGap = max(st.longestGap, s.at.Sub(lastOK))
		lastOK = s.at
	}
	return st
}

type switchWindow struct {
	failed, failedAfter int
	length              time.Duration
}

// window: after the switch started, the failures up to the first answer that follows a failure
// (or, without any failure, none) are the proxy-replacement window; failures after it count as
// failedAfter.
func (l *requestLoop) window(start time.Time) switchWindow {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w switchWindow
	var first time.Time
	closed := false
	for _, s := range l.samples {
		if s.at.Before(start) || s.phase == "migrate-failing" || s.phase == "migrate" || s.phase == "after-migrate" || s.phase == "end" {
			continue
		}
		switch {
		case s.err != "" && closed:
			w.failedAfter++
		case s.err != "":
			if first.IsZero() {
				first = s.at
			}
			w.failed++
		case !first.IsZero() && !closed:
			closed = true
			w.length = s.at.Sub(first)
		}
	}
	return w
}

// towerAgentOutage reads the member's Tower agent pod log (klog lines of test/toweragent, as
// Tower's agent logs them) for the time it had no session after since: from its first
// "Connection error" to the next "Connected". The stand-in Tower's Cluster kubeconfig points at
// the member directly (test/sandbox/fakeks/tower.go), so the request loop cannot see this outage
// before the ks-mc proxy serves the member; with KubeSphere's Tower, whose per-cluster listeners
// go down with its pod, it is the time members are unreachable.
func towerAgentOutage(s *sandbox.Sandbox, member string, since time.Time) (time.Duration, bool) {
	paths, _ := filepath.Glob(filepath.Join(s.LogDir(), "pod-"+member+"-"+kubesphere.Namespace+"-"+kubesphere.AgentName+"-*.log"))
	var down time.Time
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if len(line) < 22 || (line[0] != 'I' && line[0] != 'E' && line[0] != 'W') {
				continue
			}
			at, err := time.ParseInLocation("0102 15:04:05.000000", line[1:21], time.Local)
			if err != nil {
				continue
			}
			at = at.AddDate(since.Year(), 0, 0)
			if at.Before(since) {
				continue
			}
			switch {
			case down.IsZero() && strings.Contains(line, "Connection error"):
				down = at
			case !down.IsZero() && strings.Contains(line, "] Connected"):
				_ = f.Close()
				return at.Sub(down), true
			}
		}
		_ = f.Close()
	}
	return 0, false
}
