// Command bench compares direct access to a member's kube-apiserver with access through the ks-mc
// tunnel, every component its own process: the client (this process), `kubectl-ks_mc proxy` and
// `kubectl-ks_mc agent` (the real binary), the member's kube-apiserver v1.34.2 and etcd (sandbox
// binaries; the member in a network namespace of its own). It prints every figure beside its goal
// and writes docs/benchmarks.md. Run it with `make bench`; -only=lan|wan|scale runs a subset
// (-only=wan-watch the WAN watch delivery figure alone; -delivery-trace FILE records every event;
// -only=seq a diagnostic of CPU per small GET, see seq.go).
//
// Benchmarks measure; nothing here asserts a time.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/test/sandbox"
)

const (
	cluster = "member1"
	benchNS = "ksmc-bench"
	mib     = 1 << 20
	repeats = 3
	// maxStreams lifts the stream caps of proxy and agent above the 10,000 idle watches of the
	// scale figure (the defaults, 2048 per session, would answer 503 beyond them).
	maxStreams = "12000"
)

type options struct {
	out, dir, bin, only string
	quick               bool
	downFor             time.Duration
	profileDir          string
	wanDelay            time.Duration
	wanRate             float64
	wanLoss             float64
	wanRTOMin           time.Duration
	wanLink             string
	agents              int
	watches             int
	towerAgent          string
	deliveryTrace       string
	agentEnv, proxyEnv  string
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-relay" || os.Args[1] == "-echo") { // the floor figure's helpers (floor.go)
		fmt.Fprintln(os.Stderr, "bench helper:", runHelper(os.Args[1:]))
		os.Exit(1)
	}
	var o options
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "where to write the report (empty: do not write)")
	flag.StringVar(&o.dir, "dir", "", "work directory (default: a temporary one)")
	flag.StringVar(&o.bin, "binary", "bin/kubectl-ks_mc", "the ks-mc binary run as proxy and agent")
	flag.StringVar(&o.only, "only", "", "comma-separated subset of lan,wan,scale,restart (default: all; lan includes restart; wan-watch: the WAN watch delivery figure alone; seq, a diagnostic: CPU per small GET alone, and with perf(1) what each process does per GET)")
	flag.BoolVar(&o.quick, "quick", false, "fewer iterations (a smoke run; the figures are noisier)")
	flag.DurationVar(&o.downFor, "proxy-down", 10*time.Second, "how long the proxy stays down in the restart figure")
	flag.StringVar(&o.profileDir, "profile", "", "directory for CPU and heap profiles of proxy and agent (written when they stop; -only=lan profiles the LAN loads)")
	flag.DurationVar(&o.wanDelay, "wan-delay", 25*time.Millisecond, "one-way delay of the WAN link (RTT = 2×)")
	flag.Float64Var(&o.wanRate, "wan-rate", 100e6, "WAN link rate, bits/s, each direction")
	flag.Float64Var(&o.wanLoss, "wan-loss", 1, "WAN packet loss in percent, each direction (nftables on the sandbox router)")
	flag.StringVar(&o.wanLink, "wan-link", "auto", "how the WAN link is emulated: nfqueue (the sandbox router holds the member's packets: TCP runs end to end over the delay), relay (a TCP relay in the bench: TCP ends at it), or auto (nfqueue where iptables and NFQUEUE work, else relay)")
	flag.DurationVar(&o.wanRTOMin, "wan-rto-min", 0, "diagnostic: rto_min on the member's route to the relay (both paths' senders: the member's kube-apiserver and the agent); 0 keeps the kernel's 200ms")
	flag.IntVar(&o.agents, "agents", 1000, "agents on one proxy in the scale figure")
	flag.IntVar(&o.watches, "watches", 10000, "idle watches through one agent in the scale figure")
	flag.StringVar(&o.towerAgent, "tower-agent", "bin/tower-agent", "a Tower v0.2.x agent binary (test/toweragent/cmd/tower-agent) for the Tower column (empty: none)")
	flag.StringVar(&o.deliveryTrace, "delivery-trace", "", "append every watch event's delivery time to this file (target, update start in Unix ns, update, event, ms), to study the tail")
	flag.StringVar(&o.agentEnv, "agent-env", "", "comma-separated KEY=VALUE added to the agent's environment after the rendered one (e.g. GOGC=50, to compare)")
	flag.StringVar(&o.proxyEnv, "proxy-env", "", "the same for the proxy")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (o options) want(part string) bool {
	return o.only == "" || slices.Contains(strings.Split(o.only, ","), part)
}

// target is one way to reach the member: direct, or through a tunnel.
type target struct {
	name      string
	base      string
	plain, gz *http.Client // without and with Accept-Encoding: gzip
	cfg       *rest.Config
	procs     []*proc // the tunnel's processes (CPU per request)
}

type env struct {
	o          options
	sb         *sandbox.Sandbox
	dir        string
	bin        string
	rootIP     string
	kube       kubernetes.Interface
	memberCfg  *rest.Config
	apiserver  *proc
	proxy      *proc
	agent      *proc
	agentArgs  func(proxyAddr string) []string
	proxyAddr  string
	direct     *target
	ksmc       *target
	tower      *target // nil: not measured
	towerAgent *proc
	tunnelCfg  *rest.Config
	// The member's network namespace and node IP (the floor figure runs its agent-side relay there).
	memberNetns, memberIP string
	// What the rendered manifests give the agent and proxy containers: memory limit and environment.
	agentMem, proxyMem containerMem
}

func run(o options) error {
	ctx := context.Background()
	if o.dir == "" {
		d, err := os.MkdirTemp("", "ksmc-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("the ks-mc binary (make build): %w", err)
	}
	if o.profileDir != "" {
		if o.profileDir, err = filepath.Abs(o.profileDir); err != nil {
			return err
		}
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
	}
	r := &report{started: time.Now(), load0: loadavg()}
	e := &env{o: o, dir: o.dir, bin: bin}
	fmt.Fprintln(os.Stderr, "bench: starting the sandbox (host + member1, member1 in a network namespace)...")
	sb, err := sandbox.Up(ctx, sandbox.Options{Dir: filepath.Join(o.dir, "sandbox"), Clusters: []string{"host", cluster},
		Isolated: []string{cluster}, Binary: bin, Log: io.Discard})
	if err != nil {
		return err
	}
	e.sb = sb
	defer sb.Down()
	if err := e.setup(ctx); err != nil {
		e.stopAll()
		return err
	}
	defer e.stopAll()
	fmt.Fprintf(os.Stderr, "bench: ready: direct %s, ks-mc %s (%s)\n", e.direct.base, e.ksmc.base, e.ksmc.cfg.ServerName)
	if t, err := e.setupTower(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench: no Tower column:", err)
		r.notes = append(r.notes, "Tower agent column: not measured ("+err.Error()+").")
	} else {
		e.tower = t
		fmt.Fprintf(os.Stderr, "bench: Tower agent ready: %s\n", t.base)
		r.notes = append(r.notes, "Tower agent column: Cluster "+towerCluster+" on the same host, served by the same proxy process through a Tower "+
			"v0.2.1 agent (test/toweragent/cmd/tower-agent, Tower's /agent flags, websocket + SSH over plain HTTP as Tower does) in the member's "+
			"network namespace; its CPU is proxy + tower-agent. LAN figures only (the WAN and scale figures are the ks-mc agent's).")
	}
	if o.only == "seq" {
		return e.seq(e.n(20000, 3000))
	}
	if o.want("lan") {
		if err := e.lan(ctx, r); err != nil {
			return fmt.Errorf("lan: %w", err)
		}
	}
	if o.want("wan") || o.want("wan-watch") {
		if err := e.wan(ctx, r); err != nil {
			return fmt.Errorf("wan: %w", err)
		}
	}
	if o.want("scale") {
		if err := e.scale(ctx, r); err != nil {
			return fmt.Errorf("scale: %w", err)
		}
	}
	if (o.want("lan") || o.want("restart")) && o.profileDir == "" { // a killed proxy writes no profile
		if err := e.restart(r); err != nil {
			return fmt.Errorf("proxy restart: %w", err)
		}
	}
	if o.profileDir != "" {
		e.stopAll() // profiles are written on SIGTERM
		fmt.Fprintln(os.Stderr, "bench: profiles in", o.profileDir)
	}
	r.load1 = loadavg()
	r.ended = time.Now()
	text := r.render(e)
	fmt.Println(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "bench: wrote", o.out)
	}
	return nil
}

// stopAll sends SIGTERM to agent and proxy at once (both write their heap profiles with what is
// open at that moment), then waits for both.
func (e *env) stopAll() {
	var wg sync.WaitGroup
	for _, p := range []*proc{e.agent, e.towerAgent, e.proxy} {
		if p != nil {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop() }()
		}
	}
	wg.Wait()
}

// freePort returns a port free on ip now.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func eventually(timeout time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) setup(ctx context.Context) error {
	host, member := e.sb.Cluster("host"), e.sb.Cluster(cluster)
	e.memberNetns, e.memberIP = member.Netns, member.NodeIP
	// The root namespace's address on the sandbox network: 10.X.0.2 (host is 10.X.1.2).
	f := strings.Split(host.NodeIP, ".")
	e.rootIP = strings.Join([]string{f[0], f[1], "0", "2"}, ".")
	hostCfg, err := host.RESTConfig()
	if err != nil {
		return err
	}
	if e.memberCfg, err = member.RESTConfig(); err != nil {
		return err
	}
	if e.memberCfg.BearerToken == "" {
		return errors.New("the sandbox member has no bearer token in its kubeconfig")
	}
	// No client-side rate limit: the watch delivery figure times updates (client-go's default 5 QPS
	// would add up to 200 ms to each).
	kcfg := rest.CopyConfig(e.memberCfg)
	kcfg.QPS, kcfg.Burst = -1, 0
	if e.kube, err = kubernetes.NewForConfig(kcfg); err != nil {
		return err
	}
	apid, err := pidFromFile(filepath.Join(e.sb.Dir, "pids", cluster+"_kube-apiserver.pid"))
	if err != nil {
		return fmt.Errorf("member kube-apiserver pid: %w", err)
	}
	e.apiserver = &proc{name: "member kube-apiserver", pid: apid}

	// The proxy, against the host (Clusters, Services, the CA Secret), on the root namespace's
	// address so that the agent in the member's namespace can reach it.
	pport, err := freePort(e.rootIP)
	if err != nil {
		return err
	}
	mport, err := freePort(e.rootIP)
	if err != nil {
		return err
	}
	e.proxyAddr = net.JoinHostPort(e.rootIP, strconv.Itoa(pport))
	pargs := []string{e.bin, "proxy", "--kubeconfig", e.sb.Kubeconfig, "--context", "host",
		"--bind-address", e.rootIP, "--port", strconv.Itoa(pport), "--metrics-bind-address", net.JoinHostPort(e.rootIP, strconv.Itoa(mport)),
		"--max-streams-per-session", maxStreams, "--max-streams-per-cluster", maxStreams}
	if e.o.profileDir != "" {
		pargs = append(pargs, "--cpuprofile", filepath.Join(e.o.profileDir, "proxy.cpu.pprof"), "--memprofile", filepath.Join(e.o.profileDir, "proxy.heap.pprof"))
	}
	if e.agentMem, e.proxyMem, err = renderedMem(); err != nil {
		return err
	}
	penv := e.proxyMem.env
	if e.o.proxyEnv != "" {
		penv = append(slices.Clone(penv), strings.Split(e.o.proxyEnv, ",")...)
	}
	if e.proxy, err = startProc("proxy", filepath.Join(e.dir, "proxy.log"), penv, pargs...); err != nil {
		return err
	}
	e.proxy.metrics = fmt.Sprintf("http://%s:%d/metrics", e.rootIP, mport)
	if err := eventually(time.Minute, "proxy /health", func() error {
		resp, err := http.Get("http://" + e.proxyAddr + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("health %d", resp.StatusCode)
		}
		return nil
	}); err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(hostCfg)
	if err != nil {
		return err
	}
	clusters := dyn.Resource(kubesphere.ClusterGVR)
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster",
		"metadata": map[string]any{"name": cluster},
		"spec":     map[string]any{"provider": "kubesphere", "joinFederation": true, "connection": map[string]any{"type": "proxy"}},
	}}
	if _, err := clusters.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return err
	}
	var token string
	var kport int64
	if err := eventually(time.Minute, "Cluster token and port", func() error {
		c, err := clusters.Get(ctx, cluster, metav1.GetOptions{})
		if err != nil {
			return err
		}
		token, _, _ = unstructured.NestedString(c.Object, "spec", "connection", "token")
		kport, _, _ = unstructured.NestedInt64(c.Object, "spec", "connection", "kubernetesAPIServerPort")
		if token == "" || kport == 0 {
			return errors.New("not allocated yet")
		}
		return nil
	}); err != nil {
		return err
	}
	hostKube, err := kubernetes.NewForConfig(hostCfg)
	if err != nil {
		return err
	}
	sec, err := hostKube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.CASecretName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	pin := sec.Annotations[kubesphere.CAHashAnnotation]
	tokenFile := filepath.Join(e.dir, "agent-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	amport, err := freePortIn(member.Netns, member.NodeIP)
	if err != nil {
		return err
	}
	e.agentArgs = func(proxyAddr string) []string {
		a := []string{"ip", "netns", "exec", member.Netns, e.bin, "agent", "--kubeconfig", e.sb.Kubeconfig, "--context", cluster,
			"--name", cluster, "--proxy-server", "https://" + proxyAddr, "--token-file", tokenFile, "--ca-cert-hash", pin,
			"--max-streams-per-session", maxStreams, "--metrics-bind-address", net.JoinHostPort(member.NodeIP, strconv.Itoa(amport))}
		if e.o.profileDir != "" {
			a = append(a, "--cpuprofile", filepath.Join(e.o.profileDir, "agent.cpu.pprof"), "--memprofile", filepath.Join(e.o.profileDir, "agent.heap.pprof"))
		}
		return a
	}
	aenv := e.agentMem.env
	if e.o.agentEnv != "" {
		aenv = append(slices.Clone(aenv), strings.Split(e.o.agentEnv, ",")...)
	}
	if e.agent, err = startProc("agent", filepath.Join(e.dir, "agent.log"), aenv, e.agentArgs(e.proxyAddr)...); err != nil {
		return err
	}
	e.agent.metrics = fmt.Sprintf("http://%s:%d/metrics", member.NodeIP, amport)
	var kc []byte
	if err := eventually(2*time.Minute, "agent connected (Cluster kubeconfig)", func() error {
		c, err := clusters.Get(ctx, cluster, metav1.GetOptions{})
		if err != nil {
			return err
		}
		b64, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
		if b64 == "" {
			return errors.New("no kubeconfig yet")
		}
		kc, err = base64.StdEncoding.DecodeString(b64)
		return err
	}); err != nil {
		return err
	}
	// The client reaches the per-cluster listener as KubeSphere does: the proxy CA and server name
	// of the Cluster's kubeconfig, the user's own bearer token (here the member's admin token).
	tkc, err := clientcmd.Load(kc)
	if err != nil {
		return err
	}
	var caData []byte
	var serverName string
	for _, c := range tkc.Clusters {
		caData = c.CertificateAuthorityData
		serverName = c.TLSServerName
		if serverName == "" {
			serverName, _, _ = net.SplitHostPort(strings.TrimPrefix(c.Server, "https://"))
		}
	}
	e.tunnelCfg = &rest.Config{Host: fmt.Sprintf("https://%s:%d", e.rootIP, kport), BearerToken: e.memberCfg.BearerToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: caData, ServerName: serverName}}
	if e.direct, err = newTarget("direct", e.memberCfg, nil); err != nil {
		return err
	}
	if e.ksmc, err = newTarget("ks-mc", e.tunnelCfg, []*proc{e.proxy, e.agent}); err != nil {
		return err
	}
	if err := eventually(time.Minute, "first request through the tunnel", func() error {
		_, err := get(e.ksmc.plain, e.ksmc.base, "/api/v1/namespaces/default")
		return err
	}); err != nil {
		return err
	}
	for _, t := range []*target{e.direct, e.ksmc} {
		resp, err := t.plain.Get(t.base + "/version")
		if err != nil {
			return err
		}
		resp.Body.Close()
		fmt.Fprintf(os.Stderr, "bench: %s speaks %s\n", t.name, resp.Proto)
	}
	return e.prepare(ctx)
}

// freePortIn picks a port for a listener inside a network namespace: its addresses are its own,
// so a port of the sandbox's range that nothing of the bench uses is free there.
func freePortIn(netns, ip string) (int, error) {
	for i := 0; i < 20; i++ {
		p := 20000 + rand.IntN(20000)
		if err := exec.Command("ip", "netns", "exec", netns, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", ip, p)).Run(); err != nil {
			return p, nil // nothing listens there
		}
	}
	return 0, fmt.Errorf("no free port in %s", netns)
}

func newTarget(name string, cfg *rest.Config, procs []*proc) (*target, error) {
	t := &target{name: name, base: cfg.Host, cfg: cfg, procs: procs}
	for _, gz := range []bool{false, true} {
		c := rest.CopyConfig(cfg)
		c.QPS, c.Burst = -1, 0
		c.DisableCompression = !gz
		hc, err := rest.HTTPClientFor(c)
		if err != nil {
			return nil, err
		}
		if tr, ok := transportOf(hc); ok {
			tr.MaxIdleConnsPerHost = 128
		}
		if gz {
			t.gz = hc
		} else {
			t.plain = hc
		}
	}
	return t, nil
}

func transportOf(c *http.Client) (*http.Transport, bool) {
	rt := c.Transport
	for i := 0; i < 5; i++ {
		if t, ok := rt.(*http.Transport); ok {
			return t, true
		}
		if w, ok := rt.(interface{ WrappedRoundTripper() http.RoundTripper }); ok {
			rt = w.WrappedRoundTripper()
			continue
		}
		break
	}
	return nil, false
}

func (e *env) prepare(ctx context.Context) error {
	_, err := e.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNS}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		return err
	}
	// 1 MiB of varied text per ConfigMap: gzip compresses it as it would real objects, not 1000:1.
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"kube", "system", "sphere", "namespace", "pod", "deployment", "-", "0", "1", "2", "a", "b", "c", "tunnel"}
	for i := 0; i < 8; i++ {
		var b strings.Builder
		for b.Len() < mib-2048 {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteString(strconv.Itoa(rng.IntN(100000)))
			b.WriteByte(' ')
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("big-%d", i), Namespace: benchNS}, Data: map[string]string{"data": b.String()}}
		if _, err := e.kube.CoreV1().ConfigMaps(benchNS).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
			return err
		}
	}
	return nil
}

func get(c *http.Client, base, path string) (int64, error) {
	resp, err := c.Get(base + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return n, err
}

// loadavg is /proc/loadavg's first three fields.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
