// Command bench compares direct access to a member's kube-apiserver with access through the ks-mc
// tunnel (proxy + agent in this process, TLS over loopback, the member a real kube-apiserver of the
// sandbox), prints a table and writes it to docs/benchmarks.md. Run it with `make bench`.
//
// Benchmarks measure; nothing here asserts a time.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
	"github.com/ks-mc/ks-mc/pkg/tunnel/kube"
	"github.com/ks-mc/ks-mc/test/sandbox"
)

var profilePath string

const (
	cluster   = "member1"
	token     = "bench-token-0123456789abcdef0123456789abcdef0123456789abcdef0123"
	benchNS   = "ksmc-bench"
	mib       = 1 << 20
	repeats   = 3
	clusterIP = "10.96.0.100"
)

func main() {
	out := flag.String("out", "docs/benchmarks.md", "where to write the table (empty: do not write)")
	dir := flag.String("dir", "", "sandbox directory (default: a temporary one)")
	quick := flag.Bool("quick", false, "fewer iterations")
	downFor := flag.Duration("proxy-down", 10*time.Second, "how long the proxy stays down in the restart figure")
	only := flag.String("only", "", "comma-separated step numbers (1-7) to run, then stop without the memory, restart and many-agents figures (profiling a change)")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the small sequential GETs through the tunnel, then exit (with -only: of the chosen steps)")
	flag.Parse()
	onlySteps = *only
	profilePath = *profile
	if err := run(*out, *dir, *quick, *downFor); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// onlySteps is the -only flag.
var onlySteps string

// env is the member apiserver, reached directly and through the tunnel.
type env struct {
	direct, tunnel *rest.Config
	dc, tc         *http.Client
	kube           kubernetes.Interface
	stack          *stack
}

// stack is proxy + agent + per-cluster listener, in process.
type stack struct {
	ca       *tunnel.CA
	member   *rest.Config
	addr     string
	mu       sync.Mutex
	proxy    *tunnel.Proxy
	ln       net.Listener
	cl       *tunnel.ClusterListener
	agentCtx context.CancelFunc
	agentEnd chan struct{}
}

func (s *stack) DialStream(ctx context.Context, c string, h tunnel.StreamHeader) (net.Conn, error) {
	s.mu.Lock()
	p := s.proxy
	s.mu.Unlock()
	if p == nil {
		return nil, tunnel.ErrNoAgent
	}
	return p.DialStream(ctx, c, h)
}

func (s *stack) startProxy() error {
	return s.serveProxy(tunnel.StaticAuthenticator{cluster: token}, []string{"localhost"})
}

// serveProxy starts a proxy with auth on s.addr (a free port the first time, the same port on a
// restart) and records it in s.
func (s *stack) serveProxy(auth tunnel.Authenticator, dnsNames []string) error {
	pc := tunnel.DefaultProxyConfig()
	pc.Authenticator = auth
	rc, err := tunnel.NewRenewingCert(s.ca, "ks-mc-proxy", dnsNames, []net.IP{net.ParseIP("127.0.0.1")}, tunnel.ServingValidity)
	if err != nil {
		return err
	}
	pc.TLS = rc.ServerTLS(nil)
	quiet := logr.Discard()
	pc.Logger = &quiet
	p, err := tunnel.NewProxy(pc)
	if err != nil {
		return err
	}
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	s.addr = ln.Addr().String()
	s.mu.Lock()
	s.proxy, s.ln = p, ln
	s.mu.Unlock()
	go func() { _ = p.Serve(ln) }()
	return nil
}

// killProxy drops the proxy like kill -9 (no GoAway).
func (s *stack) killProxy() {
	s.mu.Lock()
	p, ln := s.proxy, s.ln
	s.proxy, s.ln = nil, nil
	s.mu.Unlock()
	_ = ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no drain
	_ = p.Shutdown(ctx)
}

func (s *stack) startAgent() error {
	ac := tunnel.DefaultAgentConfig()
	ac.ProxyURL = "https://" + s.addr
	ac.ClusterName = cluster
	ac.Token = func() (string, error) { return token, nil }
	ac.CACertHash = s.ca.Hash()
	ac.KubeSphereService = "127.0.0.1:1"
	quiet := logr.Discard()
	ac.Logger = &quiet
	a, err := kube.NewAgent(ac, s.member)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.agentCtx, s.agentEnd = cancel, make(chan struct{})
	go func() { defer close(s.agentEnd); _ = a.Run(ctx) }()
	return nil
}

func (s *stack) waitAgent(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		p := s.proxy
		s.mu.Unlock()
		if p != nil && p.Agents(cluster) > 0 {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("agent did not connect within %s", timeout)
}

func setup(ctx context.Context, member *rest.Config) (*env, error) {
	ca, err := tunnel.NewCA("ks-mc bench CA")
	if err != nil {
		return nil, err
	}
	st := &stack{ca: ca, member: member}
	if err := st.startProxy(); err != nil {
		return nil, err
	}
	if err := st.startAgent(); err != nil {
		return nil, err
	}
	if err := st.waitAgent(30 * time.Second); err != nil {
		return nil, err
	}
	rc, err := tunnel.NewRenewingCert(ca, "kubernetes", []string{"kubernetes"}, []net.IP{net.ParseIP(clusterIP), net.ParseIP("127.0.0.1")}, tunnel.ServingValidity)
	if err != nil {
		return nil, err
	}
	cl, err := tunnel.ListenCluster(tunnel.ClusterListenerConfig{Cluster: cluster, BindAddress: "127.0.0.1",
		TLS: rc.ServerTLS(ca.Pool()), Dialer: st, Logger: logr.Discard()})
	if err != nil {
		return nil, err
	}
	st.cl = cl
	// The tunnel client uses what the proxy writes into the Cluster: a kubeconfig with the proxy
	// CA and a kubernetes-admin client certificate, server reached on the listener.
	certPEM, keyPEM, err := ca.IssueClusterClient(cluster, kube.AdminUser, []string{"system:masters"}, tunnel.ClientValidity)
	if err != nil {
		return nil, err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://" + cl.KubeAddr().String(), CertificateAuthorityData: ca.CertPEM, TLSServerName: clusterIP}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	tcfg, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		return nil, err
	}
	for _, c := range []*rest.Config{member, tcfg} {
		c.QPS, c.Burst = -1, 0
	}
	e := &env{direct: member, tunnel: tcfg, stack: st}
	if e.dc, err = rest.HTTPClientFor(member); err != nil {
		return nil, err
	}
	if e.tc, err = rest.HTTPClientFor(tcfg); err != nil {
		return nil, err
	}
	for _, c := range []*http.Client{e.dc, e.tc} {
		if t, ok := transportOf(c); ok {
			t.MaxIdleConnsPerHost = 128
		}
	}
	if e.kube, err = kubernetes.NewForConfig(member); err != nil {
		return nil, err
	}
	return e, nil
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

// figure is one row: direct and tunnel values, ratio, target.
type figure struct {
	name, unit   string
	direct, tun  float64
	higherBetter bool
	target       string
	note         string
	only         bool // a tunnel-only figure (no direct column)
}

func (f figure) ratio() float64 {
	if f.direct == 0 || f.only {
		return 0
	}
	return f.tun / f.direct
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
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

// both measures f(client, host) for direct and tunnel, alternating, median of repeats.
func both(e *env, f func(c *http.Client, host string) (float64, error)) (float64, float64, error) {
	var d, t []float64
	for i := 0; i < repeats; i++ {
		x, err := f(e.dc, e.direct.Host)
		if err != nil {
			return 0, 0, fmt.Errorf("direct: %w", err)
		}
		y, err := f(e.tc, e.tunnel.Host)
		if err != nil {
			return 0, 0, fmt.Errorf("tunnel: %w", err)
		}
		d, t = append(d, x), append(t, y)
	}
	return median(d), median(t), nil
}

func run(out, dir string, quick bool, downFor time.Duration) error {
	ctx := context.Background()
	if dir == "" {
		d, err := os.MkdirTemp("", "ksmc-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	fmt.Fprintln(os.Stderr, "starting the sandbox member (a real kube-apiserver)...")
	sb, err := sandbox.Up(ctx, sandbox.Options{Dir: filepath.Join(dir, "sandbox"), Clusters: []string{cluster}})
	if err != nil {
		return err
	}
	defer sb.Down()
	member, err := sb.Cluster(cluster).RESTConfig()
	if err != nil {
		return err
	}
	e, err := setup(ctx, member)
	if err != nil {
		return err
	}
	n := 1
	if quick {
		n = 0
	}
	if err := prepare(ctx, e); err != nil {
		return err
	}
	if profilePath != "" && onlySteps != "" {
		// With -only, the profile covers the chosen steps (direct and tunnel runs both).
		f, err := os.Create(profilePath)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	} else if profilePath != "" {
		f, err := os.Create(profilePath)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		for i := 0; i < 3000; i++ {
			if _, err := get(e.tc, e.tunnel.Host, "/api/v1/namespaces/default"); err != nil {
				return err
			}
		}
		pprof.StopCPUProfile()
		return nil
	}
	var figs []figure
	add := func(f figure, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		fmt.Fprintf(os.Stderr, "  %-52s direct %10.2f  tunnel %10.2f  %s\n", f.name, f.direct, f.tun, f.unit)
		figs = append(figs, f)
		return nil
	}
	steps := []func() (figure, error){
		func() (figure, error) { return smallSequential(e, 200+800*n) },
		func() (figure, error) { return smallConcurrent(e, 32, 1000+3000*n) },
		func() (figure, error) { return bigGet(e, 10+20*n) },
		func() (figure, error) { return bigList(e, 3+5*n) },
		func() (figure, error) { return openWatches(e, 500) },
		func() (figure, error) { return watchDelivery(ctx, e, 50+150*n) },
		func() (figure, error) { return smallUnderBulk(e, 100+200*n) },
	}
	for i, s := range steps {
		if onlySteps != "" && !slices.Contains(strings.Split(onlySteps, ","), strconv.Itoa(i+1)) {
			continue
		}
		if err := add(s()); err != nil {
			return err
		}
	}
	if onlySteps != "" {
		fmt.Println(render(figs))
		return nil
	}
	mem, err := watchMemory(e, 500)
	if err := add(mem, err); err != nil {
		return err
	}
	if err := add(proxyRestart(e, downFor)); err != nil {
		return err
	}
	agents := 1000
	if quick {
		agents = 200
	}
	connectFig, memFig, backFig, err := manyAgents(member, agents)
	if err != nil {
		return fmt.Errorf("%d agents: %w", agents, err)
	}
	for _, f := range []figure{connectFig, memFig, backFig} {
		if err := add(f, nil); err != nil {
			return err
		}
	}
	table := render(figs)
	fmt.Println(table)
	if out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "wrote", out)
	}
	return nil
}

func prepare(ctx context.Context, e *env) error {
	_, err := e.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNS}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		return err
	}
	big := strings.Repeat("x", mib-1024)
	for i := 0; i < 8; i++ {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("big-%d", i), Namespace: benchNS}, Data: map[string]string{"data": big}}
		if _, err := e.kube.CoreV1().ConfigMaps(benchNS).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
			return err
		}
	}
	return nil
}

func smallSequential(e *env, n int) (figure, error) {
	d, t, err := both(e, func(c *http.Client, host string) (float64, error) {
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, err := get(c, host, "/api/v1/namespaces/default"); err != nil {
				return 0, err
			}
		}
		return float64(n) / time.Since(start).Seconds(), nil
	})
	return figure{name: "small GET (a namespace), sequential", unit: "req/s", direct: d, tun: t, higherBetter: true, target: "≥ 0.85"}, err
}

func smallConcurrent(e *env, conc, n int) (figure, error) {
	d, t, err := both(e, func(c *http.Client, host string) (float64, error) {
		var wg sync.WaitGroup
		errc := make(chan error, conc)
		start := time.Now()
		for w := 0; w < conc; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < n/conc; i++ {
					if _, err := get(c, host, "/api/v1/namespaces/default"); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		select {
		case err := <-errc:
			return 0, err
		default:
		}
		return float64(n/conc*conc) / time.Since(start).Seconds(), nil
	})
	return figure{name: fmt.Sprintf("small GET, %d concurrent", conc), unit: "req/s", direct: d, tun: t, higherBetter: true, target: "≥ 0.75"}, err
}

func bigGet(e *env, n int) (figure, error) {
	return bulk(e, n, "/api/v1/namespaces/"+benchNS+"/configmaps/big-0", "GET a 1 MB ConfigMap", "≥ 0.80")
}

func bigList(e *env, n int) (figure, error) {
	return bulk(e, n, "/api/v1/namespaces/"+benchNS+"/configmaps", "LIST 8 × 1 MB ConfigMaps", "≥ 0.75")
}

// bulk measures the throughput of n sequential GETs of path, direct and through the tunnel.
func bulk(e *env, n int, path, name, target string) (figure, error) {
	d, t, err := both(e, func(c *http.Client, host string) (float64, error) {
		var total int64
		start := time.Now()
		for i := 0; i < n; i++ {
			b, err := get(c, host, path)
			if err != nil {
				return 0, err
			}
			total += b
		}
		return float64(total) / mib / time.Since(start).Seconds(), nil
	})
	return figure{name: name, unit: "MiB/s", direct: d, tun: t, higherBetter: true, target: target}, err
}

// openN opens n watches concurrently and returns the time until all answered their headers, and
// a close func.
func openN(c *http.Client, host string, n int) (time.Duration, func(), error) {
	var mu sync.Mutex
	var bodies []io.Closer
	var firstErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			resp, err := c.Get(host + "/api/v1/namespaces/" + benchNS + "/configmaps?watch=1&resourceVersion=0&allowWatchBookmarks=false&labelSelector=none%3Dnone")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = err
				return
			}
			bodies = append(bodies, resp.Body)
		}()
	}
	wg.Wait()
	d := time.Since(start)
	closeAll := func() {
		for _, b := range bodies {
			_ = b.Close()
		}
	}
	return d, closeAll, firstErr
}

func openWatches(e *env, n int) (figure, error) {
	d, t, err := both(e, func(c *http.Client, host string) (float64, error) {
		d, closeAll, err := openN(c, host, n)
		closeAll()
		c.CloseIdleConnections()
		return d.Seconds() * 1000, err
	})
	return figure{name: fmt.Sprintf("open %d watches (64 at a time)", n), unit: "ms", direct: d, tun: t, target: "≤ 1.5"}, err
}

func heapAfterGC() uint64 {
	h, _ := memAfterGC()
	return h
}

// memAfterGC returns live heap and goroutine stack bytes.
func memAfterGC() (heap, stack uint64) {
	var m runtime.MemStats
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse
}

// watchMemory: heap growth per open watch of this process (client + proxy + agent), tunnel minus
// direct, so the difference is what proxy and agent hold together per watch.
func watchMemory(e *env, n int) (figure, error) {
	measure := func(c *http.Client, host string) (float64, float64, error) {
		hb, sb := memAfterGC()
		_, closeAll, err := openN(c, host, n)
		if err != nil {
			closeAll()
			return 0, 0, err
		}
		time.Sleep(500 * time.Millisecond)
		ha, sa := memAfterGC()
		closeAll()
		c.CloseIdleConnections()
		per := func(a, b uint64) float64 { return float64(int64(a)-int64(b)) / float64(n) / 1024 }
		return per(ha, hb), per(sa, sb), nil
	}
	dh, ds, err := measure(e.dc, e.direct.Host)
	if err != nil {
		return figure{name: "memory per open watch"}, err
	}
	th, ts, err := measure(e.tc, e.tunnel.Host)
	return figure{name: "heap per open watch, proxy+agent (tunnel − direct)", unit: "KiB", tun: th - dh, only: true,
		target: "≤ 32 + 16", note: fmt.Sprintf("one process holds client, proxy and agent; tunnel − direct; goroutine stacks add %.1f KiB", ts-ds)}, err
}

func watchDelivery(ctx context.Context, e *env, n int) (figure, error) {
	d, t, err := both(e, func(c *http.Client, host string) (float64, error) {
		name := "watched"
		cms := e.kube.CoreV1().ConfigMaps(benchNS)
		_ = cms.Delete(ctx, name, metav1.DeleteOptions{})
		cm, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNS}, Data: map[string]string{"n": "0"}}, metav1.CreateOptions{})
		if err != nil {
			return 0, err
		}
		resp, err := c.Get(host + "/api/v1/namespaces/" + benchNS + "/configmaps?watch=1&fieldSelector=metadata.name%3D" + name + "&resourceVersion=" + cm.ResourceVersion)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		lines := make(chan time.Time, 16)
		go func() {
			buf := make([]byte, 64*1024)
			var acc []byte
			for {
				k, err := resp.Body.Read(buf)
				acc = append(acc, buf[:k]...)
				for {
					i := bytes.IndexByte(acc, '\n')
					if i < 0 {
						break
					}
					lines <- time.Now()
					acc = acc[i+1:]
				}
				if err != nil {
					close(lines)
					return
				}
			}
		}()
		var lat []time.Duration
		for i := 0; i < n; i++ {
			cm.Data["n"] = fmt.Sprint(i + 1)
			start := time.Now()
			if cm, err = cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
				return 0, err
			}
			select {
			case at, ok := <-lines:
				if !ok {
					return 0, fmt.Errorf("watch closed")
				}
				lat = append(lat, at.Sub(start))
			case <-time.After(10 * time.Second):
				return 0, fmt.Errorf("no event")
			}
		}
		return float64(percentile(lat, 0.5).Microseconds()) / 1000, nil
	})
	return figure{name: "watch event delivery p50 (update → event)", unit: "ms", direct: d, tun: t, target: "≤ 1.3"}, err
}

// smallUnderBulk: p99 of sequential small GETs while another goroutine LISTs 8 MB in a loop on the
// same path (for the tunnel: the same yamux session).
func smallUnderBulk(e *env, n int) (figure, error) {
	d, t, err := both(e, func(c *http.Client, host string) (float64, error) {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = get(c, host, "/api/v1/namespaces/"+benchNS+"/configmaps")
			}
		}()
		time.Sleep(100 * time.Millisecond)
		var lat []time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			if _, err := get(c, host, "/api/v1/namespaces/default"); err != nil {
				close(stop)
				<-done
				return 0, err
			}
			lat = append(lat, time.Since(start))
		}
		close(stop)
		<-done
		return float64(percentile(lat, 0.99).Microseconds()) / 1000, nil
	})
	return figure{name: "small GET p99 while a bulk LIST shares the path", unit: "ms", direct: d, tun: t, target: "≤ 5 ms"}, err
}

// proxyRestart: the proxy is killed, stays down, comes back on the same address; time from its
// restart to the first successful request through the tunnel (median of 3).
func proxyRestart(e *env, down time.Duration) (figure, error) {
	var ts []float64
	for i := 0; i < repeats; i++ {
		e.stack.killProxy()
		time.Sleep(down)
		start := time.Now()
		if err := e.stack.startProxy(); err != nil {
			return figure{name: "proxy restart"}, err
		}
		for {
			if _, err := get(e.tc, e.tunnel.Host, "/api/v1/namespaces/default"); err == nil {
				break
			}
			if time.Since(start) > 60*time.Second {
				return figure{name: "proxy restart"}, fmt.Errorf("no successful request within 60s")
			}
			time.Sleep(5 * time.Millisecond)
		}
		ts = append(ts, time.Since(start).Seconds()*1000)
		time.Sleep(3 * time.Second) // a settled session before the next crash
	}
	return figure{name: fmt.Sprintf("proxy down %s, then back: restart → first OK request", down), unit: "ms", tun: median(ts), only: true,
		target: "≤ 1000 ms", note: fmt.Sprintf("runs: %.0f / %.0f / %.0f ms", ts[0], ts[1], ts[2])}, nil
}

// manyAgents connects n agents (n clusters) to one fresh proxy: time until all are connected, heap
// per agent (proxy and agent sides together, this process), and after a proxy crash and
// immediate restart the time until all are back.
func manyAgents(member *rest.Config, n int) (figure, figure, figure, error) {
	ca, err := tunnel.NewCA("ks-mc bench CA (agents)")
	if err != nil {
		return figure{}, figure{}, figure{}, err
	}
	st := &stack{ca: ca, member: member}
	auth := tunnel.StaticAuthenticator{}
	for i := 0; i < n; i++ {
		auth[fmt.Sprintf("c%d", i)] = token
	}
	startProxy := func() error { return st.serveProxy(auth, nil) }
	connected := func() int {
		st.mu.Lock()
		p := st.proxy
		st.mu.Unlock()
		c := 0
		for i := 0; i < n; i++ {
			if p.Agents(fmt.Sprintf("c%d", i)) > 0 {
				c++
			}
		}
		return c
	}
	waitAll := func(limit time.Duration) (time.Duration, error) {
		start := time.Now()
		for connected() < n {
			if time.Since(start) > limit {
				return 0, fmt.Errorf("%d of %d agents connected after %s", connected(), n, limit)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start), nil
	}
	if err := startProxy(); err != nil {
		return figure{}, figure{}, figure{}, err
	}
	before := heapAfterGC()
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
		st.killProxy()
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		ac := tunnel.DefaultAgentConfig()
		ac.ProxyURL, ac.ClusterName, ac.CACertHash = "https://"+st.addr, fmt.Sprintf("c%d", i), ca.Hash()
		ac.Token = func() (string, error) { return token, nil }
		ac.KubeSphereService = "127.0.0.1:1"
		quiet := logr.Discard()
		ac.Logger = &quiet
		a, err := kube.NewAgent(ac, member)
		if err != nil {
			return figure{}, figure{}, figure{}, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		go func() { _ = a.Run(ctx) }()
	}
	if _, err := waitAll(2 * time.Minute); err != nil {
		return figure{}, figure{}, figure{}, err
	}
	up := time.Since(start)
	time.Sleep(time.Second)
	perAgent := float64(int64(heapAfterGC())-int64(before)) / float64(n) / 1024
	time.Sleep(2 * time.Second) // sessions older than the 1 s "lived" mark
	st.killProxy()
	restart := time.Now()
	if err := startProxy(); err != nil {
		return figure{}, figure{}, figure{}, err
	}
	back, err := waitAll(2 * time.Minute)
	if err != nil {
		return figure{}, figure{}, figure{}, err
	}
	_ = restart
	return figure{name: fmt.Sprintf("%d agents on one proxy: all connected", n), unit: "ms", tun: up.Seconds() * 1000, only: true, target: "≤ 2000 ms"},
		figure{name: fmt.Sprintf("%d agents: heap per agent, proxy+agent sides", n), unit: "KiB", tun: perAgent, only: true, target: "≤ 150 (proxy side)", note: "both sides in this process"},
		figure{name: fmt.Sprintf("%d agents: proxy crash + restart → all back", n), unit: "ms", tun: back.Seconds() * 1000, only: true, target: "≤ 3000 ms"},
		nil
}

func render(figs []figure) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "# ks-mc tunnel benchmarks\n\n")
	fmt.Fprintf(&b, "Generated by `make bench` (test/bench) on %s: %s, %d CPUs (GOMAXPROCS %d), %s/%s, %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	b.WriteString("Member: a real kube-apiserver " + sandbox.KubernetesVersion + " of the sandbox. Direct: client-go HTTP client with the member's admin\n")
	b.WriteString("client certificate. Tunnel: client → per-cluster TLS listener (client certificate of the proxy CA) →\n")
	b.WriteString("proxy → yamux over TLS on loopback → agent → kube-apiserver (agent's credentials), all in this process.\n")
	b.WriteString("Each figure is the median of 3 runs, direct and tunnel alternating. Ratio = tunnel / direct for\n")
	b.WriteString("throughput, and the slowdown factor (tunnel / direct) for times and latencies.\n\n")
	b.WriteString("| figure | direct | tunnel | ratio | target | note |\n|---|---|---|---|---|---|\n")
	for _, f := range figs {
		dcol, ratio := fmt.Sprintf("%.2f %s", f.direct, f.unit), fmt.Sprintf("%.2f", f.ratio())
		if f.only {
			dcol, ratio = "–", "–"
		}
		fmt.Fprintf(&b, "| %s | %s | %.2f %s | %s | %s | %s |\n", f.name, dcol, f.tun, f.unit, ratio, f.target, f.note)
	}
	b.WriteString("\nNot measured yet: 10,000 idle watches through one agent.\n")
	return b.String()
}
