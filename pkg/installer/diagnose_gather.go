package installer

import (
	"context"
	"errors"
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

// probeHost is the second round: probes that need the first (the published address, the
// Cluster names).
func probeHost(ctx context.Context, h *hostData, o DiagnoseOptions) {
	p := newPool(o.Workers, o.Timeout)
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
