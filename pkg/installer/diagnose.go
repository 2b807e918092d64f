package installer

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// "kubectl ks-mc diagnose": read-only checks of a fleet (host, Clusters, members) that say why a
// member does not work, each with its evidence and the fix as data (which setting, which command).
// Data is gathered concurrently by a bounded pool of workers, every read with a timeout; the checks
// themselves are pure functions of what was gathered (diagnose_checks.go).

// DiagStatus is the outcome of one check.
type DiagStatus string

const (
	DiagOK   DiagStatus = "ok"
	DiagWarn DiagStatus = "warn"
	DiagFail DiagStatus = "fail"
	// DiagSkip: the check could not run (typically: no member context given); it never fails a run.
	DiagSkip DiagStatus = "skip"
)

// Fix is how to repair a finding, as data: the command layer renders it.
type Fix struct {
	// Action says what to do, in words.
	Action string `json:"action"`
	// Setting is the object and field to change, when the fix is an edit.
	Setting string `json:"setting,omitempty"`
	// KsMc is a ks-mc command line without "kubectl ks-mc" (["join", "--context", "m1", ...]).
	KsMc []string `json:"ksmc,omitempty"`
	// Kubectl is a kubectl command line without "kubectl".
	Kubectl []string `json:"kubectl,omitempty"`
	// See names another check whose fix comes first (the root cause).
	See string `json:"see,omitempty"`
}

// Finding is the result of one check.
type Finding struct {
	// ID names the check ("host.role", "cluster.tunnel", "member.jwtSecret").
	ID     string     `json:"id"`
	Status DiagStatus `json:"status"`
	// Subject is what was checked: "host", "cluster/NAME", "context/NAME".
	Subject string `json:"subject"`
	// Summary is the finding in one line.
	Summary string `json:"summary"`
	// Evidence lists what was observed (never a secret).
	Evidence []string `json:"evidence,omitempty"`
	// Sources names the evidence used by checks that combine several (cluster.tunnel).
	Sources []string `json:"sources,omitempty"`
	// LatencyMS is a measured round trip, when one was measured.
	LatencyMS *float64 `json:"latencyMs,omitempty"`
	Fix       *Fix     `json:"fix,omitempty"`
}

// DiagnoseReport is every finding of one run.
type DiagnoseReport struct {
	Host string `json:"host"`
	// Contexts maps each member context to the Cluster it was matched to ("" when none).
	Contexts map[string]string `json:"contexts"`
	Findings []Finding         `json:"findings"`
	Summary  DiagnoseSummary   `json:"summary"`
	// Duration of the run in milliseconds (left out of golden files).
	DurationMS int64 `json:"durationMs,omitempty"`
}

// DiagnoseSummary counts findings per status.
type DiagnoseSummary struct {
	OK   int `json:"ok"`
	Warn int `json:"warn"`
	Fail int `json:"fail"`
	Skip int `json:"skip"`
}

// Failed reports whether any check failed, or (strict) warned.
func (r *DiagnoseReport) Failed(strict bool) bool {
	return r.Summary.Fail > 0 || (strict && r.Summary.Warn > 0)
}

// Find returns the findings of id for subject ("" = any subject).
func (r *DiagnoseReport) Find(id, subject string) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.ID == id && (subject == "" || f.Subject == subject) {
			out = append(out, f)
		}
	}
	return out
}

// DiagnoseOptions configure Diagnose.
type DiagnoseOptions struct {
	Host    *Clients
	Members []*Clients
	// Workers bounds the concurrent reads (default 8).
	Workers int
	// Timeout bounds every single read or probe (default 5s).
	Timeout time.Duration
	// Clock measures an apiserver's clock offset (default APIServerClock).
	Clock ServerClock
	// ProxyHealth probes the published proxy address from this machine (default CheckProxyHealth).
	ProxyHealth func(ctx context.Context, address string, timeout time.Duration) error
	// ServiceProxy asks the host apiserver to proxy GET /version to mc-NAME (default: the
	// Services proxy subresource); nil result error = an answer came back through the tunnel.
	ServiceProxy func(ctx context.Context, host *Clients, cluster string) error
	// TunnelOnly skips the probes only the host checks need (status --probe).
	TunnelOnly bool
	// Bundle collects the objects and logs behind the checks (redacted) for a support bundle.
	Bundle bool
	// LogLines is how many recent log lines of agent/tower pods are read (default 30).
	LogLines int64
	// Now is the clock (tests).
	Now func() time.Time
}

// hostData is what was read on the host.
type hostData struct {
	c            *Clients
	cc           *ClusterConfiguration
	ccErr        error
	cfg          *KubeSphereConfig
	cfgErr       error
	installer    InstallerState
	installerErr error
	restart      bool
	restartWhy   string
	restartErr   error
	tower        *appsv1.Deployment
	towerErr     error
	svc          *corev1.Service
	svcErr       error
	nodes        []corev1.Node
	nodesErr     error
	clusters     []unstructured.Unstructured
	clustersErr  error
	leases       map[string]*coordinationv1.Lease
	leasesErr    error
	uid          string
	clock        time.Duration
	clockErr     error
	health       error
	healthRTT    time.Duration
	healthAddr   string
	addrFromLB   bool
	svcProxy     map[string]probeResult
}

type probeResult struct {
	err error
	rtt time.Duration
}

// memberData is what was read through one member context.
type memberData struct {
	c          *Clients
	cc         *ClusterConfiguration
	ccErr      error
	cfg        *KubeSphereConfig
	cfgErr     error
	installer  InstallerState
	uid        string
	uidErr     error
	clock      time.Duration
	clockErr   error
	agent      *appsv1.Deployment
	agentErr   error
	agentToken Secret
	tokenErr   error
	pods       []corev1.Pod
	podsErr    error
	logs       map[string]string
	// cluster is the Cluster this context was matched to, matchedBy how.
	cluster   string
	matchedBy string
}

// pool runs tasks with at most n at a time, each with its own timeout.
type pool struct {
	sem     chan struct{}
	wg      sync.WaitGroup
	timeout time.Duration
}

func newPool(n int, timeout time.Duration) *pool {
	return &pool{sem: make(chan struct{}, n), timeout: timeout}
}

func (p *pool) go_(ctx context.Context, f func(ctx context.Context)) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.sem <- struct{}{}
		defer func() { <-p.sem }()
		tctx, cancel := context.WithTimeout(ctx, p.timeout)
		defer cancel()
		f(tctx)
	}()
}

func (p *pool) wait() { p.wg.Wait() }

// Diagnose runs every check. It returns an error only when nothing can be checked (no host).
func Diagnose(ctx context.Context, o DiagnoseOptions) (*DiagnoseReport, *Bundle, error) {
	if o.Host == nil {
		return nil, nil, errors.New("diagnose: a host is required")
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Clock == nil {
		o.Clock = APIServerClock
	}
	if o.ProxyHealth == nil {
		o.ProxyHealth = CheckProxyHealth
	}
	if o.ServiceProxy == nil {
		o.ServiceProxy = serviceProxyVersion
	}
	if o.LogLines <= 0 {
		o.LogLines = 30
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	start := o.Now()
	var bundle *Bundle
	if o.Bundle {
		bundle = newBundle()
	}
	h := &hostData{c: o.Host, svcProxy: map[string]probeResult{}}
	members := make([]*memberData, 0, len(o.Members))
	for _, m := range o.Members {
		if m != nil {
			members = append(members, &memberData{c: m, logs: map[string]string{}})
		}
	}
	p := newPool(o.Workers, o.Timeout)
	gatherHost(ctx, p, h, o, bundle)
	for _, m := range members {
		gatherMember(ctx, p, m, o, bundle)
	}
	p.wait()

	// Second round: probes that need the first (the published address, the Cluster names).
	p = newPool(o.Workers, o.Timeout)
	if h.cfg != nil || h.cc != nil {
		addr := ""
		if h.cfg != nil {
			addr = h.cfg.Multicluster.ProxyPublishAddress
		}
		if addr == "" && h.cc != nil {
			addr = h.cc.ProxyPublishAddress()
		}
		if addr == "" && h.svc != nil {
			// Without proxyPublishAddress KubeSphere publishes the tower Service's load balancer.
			addr = LoadBalancerAddress(h.svc)
			h.addrFromLB = addr != ""
		}
		h.healthAddr = addr
		if addr != "" && !o.TunnelOnly {
			p.go_(ctx, func(ctx context.Context) {
				t0 := time.Now()
				h.health = o.ProxyHealth(ctx, addr, o.Timeout)
				h.healthRTT = time.Since(t0)
			})
		}
	}
	var mu sync.Mutex
	for i := range h.clusters {
		c := &h.clusters[i]
		if IsHostCluster(c) || connectionType(c) != "proxy" {
			continue
		}
		name := c.GetName()
		p.go_(ctx, func(ctx context.Context) {
			t0 := time.Now()
			err := o.ServiceProxy(ctx, o.Host, name)
			mu.Lock()
			h.svcProxy[name] = probeResult{err: err, rtt: time.Since(t0)}
			mu.Unlock()
		})
	}
	p.wait()

	matchMembers(h, members)
	rep := &DiagnoseReport{Host: o.Host.Context, Contexts: map[string]string{}}
	for _, m := range members {
		rep.Contexts[m.c.Context] = m.cluster
	}
	rep.Findings = runChecks(h, members, o.Now())
	// Evidence quotes other programs' words (installer lines, API errors): scrub every secret seen.
	secrets := collectSecrets(h, members)
	for i := range rep.Findings {
		f := &rep.Findings[i]
		f.Summary = manifests.Scrub(f.Summary, secrets...)
		for j := range f.Evidence {
			f.Evidence[j] = manifests.Scrub(f.Evidence[j], secrets...)
		}
	}
	for _, f := range rep.Findings {
		switch f.Status {
		case DiagOK:
			rep.Summary.OK++
		case DiagWarn:
			rep.Summary.Warn++
		case DiagFail:
			rep.Summary.Fail++
		case DiagSkip:
			rep.Summary.Skip++
		}
	}
	rep.DurationMS = o.Now().Sub(start).Milliseconds()
	if bundle != nil {
		bundle.secrets = secrets
	}
	return rep, bundle, nil
}

func connectionType(c *unstructured.Unstructured) string {
	t, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "type")
	return t
}

func gatherHost(ctx context.Context, p *pool, h *hostData, o DiagnoseOptions, b *Bundle) {
	c := h.c
	p.go_(ctx, func(ctx context.Context) {
		h.cc, h.ccErr = GetClusterConfiguration(ctx, c)
		if h.cc != nil {
			b.addObject("host/clusterconfiguration.yaml", h.cc.Object.Object)
			h.restart, h.restartWhy, h.restartErr = NeedsAPIServerRestart(ctx, c, h.cc)
		}
	})
	p.go_(ctx, func(ctx context.Context) {
		h.cfg, h.cfgErr = GetKubeSphereConfig(ctx, c)
		if h.cfg != nil {
			b.addKubeSphereConfig("host/kubesphere-config.yaml", h.cfg)
		}
	})
	p.go_(ctx, func(ctx context.Context) {
		h.installer, h.installerErr = GetInstallerState(ctx, c, time.Time{})
	})
	p.go_(ctx, func(ctx context.Context) {
		d, err := c.Kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		h.tower, h.towerErr = d, err
		if err == nil {
			b.addTyped("host/deployment-tower.yaml", "apps/v1", "Deployment", d)
		}
	})
	p.go_(ctx, func(ctx context.Context) {
		s, err := c.Kube.CoreV1().Services(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		h.svc, h.svcErr = s, err
		if err == nil {
			b.addTyped("host/service-tower.yaml", "v1", "Service", s)
		}
	})
	p.go_(ctx, func(ctx context.Context) {
		n, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			h.nodes = n.Items
		}
		h.nodesErr = err
	})
	p.go_(ctx, func(ctx context.Context) {
		h.clusters, h.clustersErr = ListClusters(ctx, c)
		for i := range h.clusters {
			b.addObject("host/clusters/"+h.clusters[i].GetName()+".yaml", h.clusters[i].Object)
		}
	})
	p.go_(ctx, func(ctx context.Context) {
		h.leases = map[string]*coordinationv1.Lease{}
		l, err := c.Kube.CoordinationV1().Leases(kubesphere.Namespace).List(ctx, metav1.ListOptions{LabelSelector: kubesphere.HeartbeatClusterLabel})
		h.leasesErr = err
		if err != nil {
			return
		}
		for i := range l.Items {
			h.leases[l.Items[i].Labels[kubesphere.HeartbeatClusterLabel]] = &l.Items[i]
		}
		b.addTyped("host/heartbeat-leases.yaml", "coordination.k8s.io/v1", "LeaseList", l)
	})
	p.go_(ctx, func(ctx context.Context) {
		h.uid, _ = KubeSystemUID(ctx, c)
	})
	p.go_(ctx, func(ctx context.Context) {
		h.clock, _, h.clockErr = o.Clock(ctx, c)
	})
	if b != nil {
		p.go_(ctx, func(ctx context.Context) { gatherNamespace(ctx, c, "host", "app=tower", o.LogLines, b) })
	}
}

// gatherNamespace adds kubesphere-system's pods and events and the last log lines of the pods
// matching logSelector to the bundle.
func gatherNamespace(ctx context.Context, c *Clients, dir, logSelector string, lines int64, b *Bundle) {
	if pods, err := c.Kube.CoreV1().Pods(kubesphere.Namespace).List(ctx, metav1.ListOptions{}); err == nil {
		b.addTyped(dir+"/pods.yaml", "v1", "PodList", pods)
	}
	if ev, err := c.Kube.CoreV1().Events(kubesphere.Namespace).List(ctx, metav1.ListOptions{}); err == nil {
		b.addTyped(dir+"/events.yaml", "v1", "EventList", ev)
	}
	pods, err := c.Kube.CoreV1().Pods(kubesphere.Namespace).List(ctx, metav1.ListOptions{LabelSelector: logSelector})
	if err != nil {
		return
	}
	for _, pod := range pods.Items {
		raw, err := podLogs(ctx, c, pod.Name, &corev1.PodLogOptions{TailLines: &lines})
		if err != nil {
			b.addText(dir+"/logs/"+pod.Name+".log", "(logs unavailable: "+apiReason(err)+")\n")
			continue
		}
		b.addText(dir+"/logs/"+pod.Name+".log", string(raw))
	}
}

func gatherMember(ctx context.Context, p *pool, m *memberData, o DiagnoseOptions, b *Bundle) {
	c := m.c
	dir := "members/" + c.Context
	p.go_(ctx, func(ctx context.Context) {
		m.cc, m.ccErr = GetClusterConfiguration(ctx, c)
		if m.cc != nil {
			b.addObject(dir+"/clusterconfiguration.yaml", m.cc.Object.Object)
		}
		m.installer, _ = GetInstallerState(ctx, c, time.Time{})
	})
	p.go_(ctx, func(ctx context.Context) {
		m.cfg, m.cfgErr = GetKubeSphereConfig(ctx, c)
		if m.cfg != nil {
			b.addKubeSphereConfig(dir+"/kubesphere-config.yaml", m.cfg)
		}
	})
	p.go_(ctx, func(ctx context.Context) { m.uid, m.uidErr = KubeSystemUID(ctx, c) })
	p.go_(ctx, func(ctx context.Context) { m.clock, _, m.clockErr = o.Clock(ctx, c) })
	p.go_(ctx, func(ctx context.Context) {
		m.agent, m.agentErr = GetAgentDeployment(ctx, c)
		if m.agent == nil {
			return
		}
		b.addTyped(dir+"/deployment-cluster-agent.yaml", "apps/v1", "Deployment", m.agent)
		if InspectAgent(m.agent).Tunnel == kubesphere.TunnelKsMc {
			s, err := c.Kube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.AgentTokenSecretName, metav1.GetOptions{})
			if err != nil {
				m.tokenErr = err
			} else {
				m.agentToken = Secret(s.Data[kubesphere.AgentTokenSecretKey])
			}
		} else {
			m.agentToken = Secret(towerAgentToken(m.agent))
		}
		sel := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: manifests.AgentSelector()})
		pods, err := c.Kube.CoreV1().Pods(kubesphere.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		m.podsErr = err
		if err != nil {
			return
		}
		m.pods = pods.Items
		for _, pod := range pods.Items {
			lines := o.LogLines
			raw, err := podLogs(ctx, c, pod.Name, &corev1.PodLogOptions{TailLines: &lines})
			if err == nil {
				m.logs[pod.Name] = manifests.Scrub(string(raw), m.agentToken.Reveal())
			}
		}
	})
	if b != nil {
		p.go_(ctx, func(ctx context.Context) { gatherNamespace(ctx, c, dir, "app=agent", o.LogLines, b) })
	}
}

// towerAgentToken is the --token= value of a Tower agent's command.
func towerAgentToken(d *appsv1.Deployment) string {
	if d == nil || len(d.Spec.Template.Spec.Containers) == 0 {
		return ""
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	for _, a := range append(append([]string{}, ctr.Command...), ctr.Args...) {
		if v, ok := strings.CutPrefix(a, "--token="); ok {
			return v
		}
	}
	return ""
}

// serviceProxyVersion asks the host apiserver to proxy GET /version to Service mc-NAME:6443.
func serviceProxyVersion(ctx context.Context, host *Clients, cluster string) error {
	if host.Config == nil {
		return errors.New("no REST config")
	}
	_, err := host.Kube.CoreV1().Services(kubesphere.Namespace).ProxyGet("https", kubesphere.ServicePrefix+cluster, "6443", "/version", nil).DoRaw(ctx)
	if err == nil {
		return nil
	}
	// The member's apiserver answering 401/403 to an anonymous request also proves the tunnel.
	var se *apierrors.StatusError
	if errors.As(err, &se) && (se.ErrStatus.Code == 401 || se.ErrStatus.Code == 403) && se.ErrStatus.Details == nil {
		return nil
	}
	return err
}

// matchMembers links each member context to a Cluster: by kube-system UID (as join does), else by
// the agent Deployment's --name (a reinstalled member: new UID, same agent).
func matchMembers(h *hostData, members []*memberData) {
	byUID := map[string]string{}
	names := map[string]bool{}
	for i := range h.clusters {
		c := &h.clusters[i]
		names[c.GetName()] = true
		if uid := ClusterMemberUID(c); uid != "" {
			byUID[uid] = c.GetName()
		}
	}
	for _, m := range members {
		if m.uid != "" && byUID[m.uid] != "" {
			m.cluster, m.matchedBy = byUID[m.uid], "kube-system UID"
			continue
		}
		if n := InspectAgent(m.agent).ClusterName; n != "" && names[n] {
			m.cluster, m.matchedBy = n, "agent --name"
		}
	}
}

// digestEqual compares two secrets by their SHA-256 digests (neither is ever printed).
func digestEqual(a, b Secret) bool {
	da, db := sha256.Sum256([]byte(a.Reveal())), sha256.Sum256([]byte(b.Reveal()))
	return subtle.ConstantTimeCompare(da[:], db[:]) == 1
}

func sortFindings(fs []Finding) {
	rank := func(s string) int {
		switch {
		case s == "host":
			return 0
		case strings.HasPrefix(s, "cluster/"):
			return 1
		}
		return 2
	}
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if rank(a.Subject) != rank(b.Subject) {
			return rank(a.Subject) < rank(b.Subject)
		}
		return a.Subject < b.Subject
	})
}

func ms(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1000
	return &v
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return apiReason(err)
}

func fmtAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String()
}

var _ = fmt.Sprintf
