package main

// The 1,000-agents figure keeps the bench's earlier in-process form: one proxy (tunnel.Proxy) and
// n agents (tunnel.Agent) in this process, the member a real kube-apiserver. Running 1,000 agent
// processes on a 2-core machine would measure process start-up, not the proxy.

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"

	"github.com/ks-mc/ks-mc/pkg/tunnel"
	"github.com/ks-mc/ks-mc/pkg/tunnel/kube"
)

const agentsToken = "bench-agentsToken-0123456789abcdef0123456789abcdef0123456789abcdef0123"

// stack is an in-process proxy on a fixed address (restartable).
type stack struct {
	ca     *tunnel.CA
	member *rest.Config
	addr   string
	mu     sync.Mutex
	proxy  *tunnel.Proxy
	ln     net.Listener
}

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

// manyAgents connects n agents (n clusters) to one fresh proxy: time until all are connected, heap
// per agent (proxy and agent sides together, this process), and after a proxy crash and
// immediate restart the time until all are back.
func manyAgents(member *rest.Config, n int) ([]row, error) {
	ca, err := tunnel.NewCA("ks-mc bench CA (agents)")
	if err != nil {
		return nil, err
	}
	st := &stack{ca: ca, member: member}
	auth := tunnel.StaticAuthenticator{}
	for i := 0; i < n; i++ {
		auth[fmt.Sprintf("c%d", i)] = agentsToken
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
		return nil, err
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
		ac.Token = func() (string, error) { return agentsToken, nil }
		ac.KubeSphereService = "127.0.0.1:1"
		quiet := logr.Discard()
		ac.Logger = &quiet
		a, err := kube.NewAgent(ac, member)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		go func() { _ = a.Run(ctx) }()
	}
	if _, err := waitAll(2 * time.Minute); err != nil {
		return nil, err
	}
	up := time.Since(start)
	time.Sleep(time.Second)
	perAgent := float64(int64(heapAfterGC())-int64(before)) / float64(n) / 1024
	time.Sleep(2 * time.Second) // sessions older than the 1 s "lived" mark
	st.killProxy()
	if err := startProxy(); err != nil {
		return nil, err
	}
	back, err := waitAll(2 * time.Minute)
	if err != nil {
		return nil, err
	}
	return []row{
		{section: "scale", name: fmt.Sprintf("%d agents on one proxy (in-process): all connected", n), ksmc: fmt.Sprintf("%.0f ms", ms(up)), value: ms(up), valueStr: fmt.Sprintf("%.0f ms", ms(up)), noGoal: true},
		{section: "scale", name: fmt.Sprintf("%d agents: heap per agent, proxy and agent sides together", n), ksmc: fmt.Sprintf("%.1f KiB", perAgent), value: perAgent, valueStr: fmt.Sprintf("%.1f KiB", perAgent), noGoal: true, note: "both sides in the bench process"},
		{section: "scale", name: fmt.Sprintf("%d agents: proxy crash + restart → all back", n), ksmc: fmt.Sprintf("%.0f ms", ms(back)), value: ms(back) / 1000, valueStr: fmt.Sprintf("%.2f s", back.Seconds()), g: goal{op: "≤", limit: 3, unit: " s"}},
	}, nil
}
