// Package sandbox runs local multi-cluster Kubernetes sandboxes for ks-mc's tests and demo:
// real etcd, kube-apiserver, kube-controller-manager and kube-scheduler processes per cluster, a kwok
// fake node so Deployments roll out, a KubeSphere 3.4 stand-in (package fakeks, a test double), and
// process-backed pods that run the freshly built ks-mc binary for Deployments using the ks-mc image.
//
// Nothing runs in containers: there is no kubelet and no kube-proxy. See docs/CONVENTIONS.md for how
// pod IPs, Services and load balancers are simulated.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// Options configure a sandbox.
type Options struct {
	// Dir holds the sandbox's state: kubeconfig, PKI, logs, PID files, data. Required.
	Dir string
	// Clusters to start, e.g. host, member1. The first is conventionally the host.
	Clusters []string
	// Binary is the ks-mc binary run for process-backed pods (default $KSMC_BINARY).
	Binary string
	// ImageRepository selects the Deployments run as processes (default the ks-mc image repository).
	ImageRepository string
	// TowerAgentBinary runs the agent container of Deployments of KubeSphere's Tower image
	// (kubesphere/tower, command /agent): test/toweragent's tower-agent (default
	// $KSMC_TOWER_AGENT_BINARY, else built into Dir by Up; "-" runs no Tower agents).
	TowerAgentBinary string
	// Isolated clusters run in their own network namespace: they can dial the others, nobody but
	// this machine's root namespace can dial them (requires root and iproute2 + nftables).
	Isolated []string
	// Detach lets the processes outlive the calling process (the sandbox command); tests leave it
	// false so that a crashed test leaves no stray processes.
	Detach bool
	// ControllersExe, when set, runs the stand-in controllers and the pod runner as a separate
	// process "<ControllersExe> controllers --dir <Dir>" instead of goroutines of the caller.
	ControllersExe string
	// Log receives progress lines (nil: discard).
	Log io.Writer
	// ExtraArgs are appended to a component's command line, by component name
	// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok).
	ExtraArgs map[string][]string
	// APIServerPorts fixes a cluster's kube-apiserver port instead of picking a free one.
	APIServerPorts map[string]int
}

// Sandbox is a running set of clusters.
type Sandbox struct {
	State
	log      io.Writer
	procs    []*Proc
	stopCtrl context.CancelFunc
	ctrlDone chan struct{}
	mu       sync.Mutex
}

// State is what a sandbox records in <Dir>/sandbox.json, so other processes can use or stop it.
type State struct {
	Dir             string `json:"dir"`
	Kubeconfig      string `json:"kubeconfig"`
	BinDir          string `json:"binDir"`
	Binary          string `json:"binary"`
	ImageRepository string `json:"imageRepository"`
	// TowerAgentBinary is test/toweragent's tower-agent ("" runs no Tower agents).
	TowerAgentBinary string     `json:"towerAgentBinary,omitempty"`
	Clusters         []*Cluster `json:"clusters"`
}

// Cluster is one sandbox cluster.
type Cluster struct {
	Name     string `json:"name"`
	Index    int    `json:"index"`
	NodeIP   string `json:"nodeIP"` // where its process-backed pods listen
	Server   string `json:"server"` // https://127.0.0.1:<port>
	EtcdPort int    `json:"etcdPort"`
	Netns    string `json:"netns,omitempty"`
	Isolated bool   `json:"isolated,omitempty"`
	DataDir  string `json:"dataDir"`

	kubeconfig string
}

const stateFile = "sandbox.json"

// Load reads the state of a sandbox started by another process.
func Load(dir string) (*Sandbox, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("read sandbox state: %w", err)
	}
	s := &Sandbox{log: io.Discard}
	if err := json.Unmarshal(b, &s.State); err != nil {
		return nil, fmt.Errorf("parse sandbox state: %w", err)
	}
	for _, c := range s.Clusters {
		c.kubeconfig = s.Kubeconfig
	}
	return s, nil
}

func (s *Sandbox) save() error {
	b, err := json.MarshalIndent(&s.State, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.Dir, stateFile), b, 0o644)
}

// Cluster returns the named cluster or nil.
func (s *Sandbox) Cluster(name string) *Cluster {
	for _, c := range s.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// RESTConfig returns an admin client config for the cluster.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: c.kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: c.Name}).ClientConfig()
}

// Client returns an admin clientset for the cluster.
func (c *Cluster) Client() (kubernetes.Interface, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (s *Sandbox) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "sandbox: "+format+"\n", args...)
}

// Up builds (or reuses) the binaries and starts every cluster with the KubeSphere stand-in.
// On failure everything already started is stopped again.
func Up(ctx context.Context, o Options) (_ *Sandbox, err error) {
	if o.Dir == "" {
		return nil, errors.New("sandbox: Options.Dir is required")
	}
	if len(o.Clusters) == 0 {
		o.Clusters = []string{"host", "member1"}
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Binary == "" {
		o.Binary = os.Getenv("KSMC_BINARY")
	}
	if o.ImageRepository == "" {
		o.ImageRepository = DefaultImageRepository()
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if old, lerr := Load(dir); lerr == nil {
		old.log = o.Log
		old.logf("stopping the previous sandbox in %s", dir)
		_ = old.Down()
	}
	// Every Up starts from empty clusters: remove what an earlier sandbox in Dir left (only the
	// entries a sandbox writes, in case Dir holds anything else).
	for _, name := range []string{"clusters", "pods", "logs", "pids", stateFile, "kubeconfig"} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("clean sandbox dir: %w", err)
		}
	}
	if old, _ := filepath.Glob(filepath.Join(dir, "tunnel-*.kubeconfig")); len(old) > 0 {
		for _, f := range old {
			_ = os.Remove(f)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	bin, err := EnsureBinaries(ctx, o.Log)
	if err != nil {
		return nil, err
	}
	s := &Sandbox{log: o.Log, State: State{
		Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig"), BinDir: bin,
		Binary: o.Binary, ImageRepository: o.ImageRepository,
	}}
	s.TowerAgentBinary = towerAgentBinary(ctx, o, dir, s.logf)
	defer func() {
		if err != nil {
			s.logf("start failed; stopping what was started")
			_ = s.Down()
		}
	}()
	isolated := map[string]bool{}
	for _, n := range o.Isolated {
		isolated[n] = true
	}
	for i, name := range o.Clusters {
		c := &Cluster{Name: name, Index: i + 1, DataDir: filepath.Join(dir, "clusters", name), kubeconfig: s.Kubeconfig}
		c.NodeIP = fmt.Sprintf("127.100.%d.1", c.Index)
		if len(o.Isolated) > 0 {
			// With isolation every cluster gets a namespace (so host components really are
			// elsewhere than this machine); only the Isolated ones refuse incoming connections.
			c.Netns = netnsName(dir, name)
			c.Isolated = isolated[name]
		}
		s.Clusters = append(s.Clusters, c)
	}
	if len(o.Isolated) > 0 {
		if err := setupNetwork(ctx, s, s.log); err != nil {
			return nil, err
		}
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	kcfg := clientcmdapi.NewConfig()
	for _, c := range s.Clusters {
		if err := s.startCluster(ctx, c, o, kcfg); err != nil {
			return nil, err
		}
		if err := s.save(); err != nil {
			return nil, err
		}
	}
	kcfg.CurrentContext = s.Clusters[0].Name
	if err := clientcmd.WriteToFile(*kcfg, s.Kubeconfig); err != nil {
		return nil, fmt.Errorf("write kubeconfig: %w", err)
	}
	for _, c := range s.Clusters {
		if err := s.waitReady(ctx, c); err != nil {
			return nil, err
		}
	}
	if err := s.startControllers(ctx, o); err != nil {
		return nil, err
	}
	for _, c := range s.Clusters {
		if err := s.waitStandIn(ctx, c); err != nil {
			return nil, err
		}
	}
	s.logf("up: %d cluster(s), kubeconfig %s", len(s.Clusters), s.Kubeconfig)
	return s, nil
}

// DefaultImageRepository is the image repository whose Deployments run as processes.
func DefaultImageRepository() string {
	if v := os.Getenv("KSMC_IMAGE_REPOSITORY"); v != "" {
		return v
	}
	return defaultImageRepository
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startCluster starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok.
func (s *Sandbox) startCluster(ctx context.Context, c *Cluster, o Options, kcfg *clientcmdapi.Config) error {
	s.logf("starting cluster %s (node IP %s)", c.Name, c.NodeIP)
	pidDir := filepath.Join(s.Dir, "pids")
	logDir := filepath.Join(s.Dir, "logs")
	bindHost := "127.0.0.1"
	if c.Netns != "" {
		bindHost = c.NodeIP
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(c.NodeIP), net.ParseIP("10.96.0.1")}
	p, err := makePKI(filepath.Join(c.DataDir, "pki"), ips,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return err
	}
	ports, err := pickPorts(c, bindHost, 4)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort := ports[0], ports[1], ports[2]
	if p, ok := o.APIServerPorts[c.Name]; ok {
		apiPort = p
	}
	c.EtcdPort = etcdPort
	c.Server = fmt.Sprintf("https://%s:%d", bindHost, apiPort)

	start := func(component string, binary string, args ...string) (*Proc, error) {
		pr, err := startProc(procOptions{
			Name: c.Name + "/" + component, Binary: binary, Args: append(args, o.ExtraArgs[component]...), Dir: c.DataDir,
			LogPath: filepath.Join(logDir, c.Name+"-"+component+".log"), PIDDir: pidDir, Netns: c.Netns, Detach: o.Detach,
		})
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.procs = append(s.procs, pr)
		s.mu.Unlock()
		return pr, nil
	}
	etcdURL := fmt.Sprintf("http://%s:%d", bindHost, etcdPort)
	peerURL := fmt.Sprintf("http://%s:%d", bindHost, peerPort)
	etcd, err := start("etcd", filepath.Join(s.BinDir, BinEtcd),
		"--name", c.Name, "--data-dir", filepath.Join(c.DataDir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", c.Name+"="+peerURL, "--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, c.Name+" etcd", 30*time.Second, []*Proc{etcd}, func(ctx context.Context) (bool, error) {
		err := dial(ctx, c, fmt.Sprintf("%s:%d", bindHost, etcdPort))
		return err == nil, err
	}); err != nil {
		return err
	}
	api, err := start("kube-apiserver", filepath.Join(s.BinDir, BinKubeAPIServer),
		"--etcd-servers", etcdURL, "--etcd-prefix", "/registry-"+c.Name,
		"--secure-port", fmt.Sprint(apiPort), "--bind-address", bindHost, "--advertise-address", bindHost,
		"--cert-dir", filepath.Join(c.DataDir, "pki"),
		"--tls-cert-file", p.ServingCert, "--tls-private-key-file", p.ServingKey, "--client-ca-file", p.CACert,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", p.SAKey, "--service-account-signing-key-file", p.SAKey,
		"--authorization-mode", "RBAC", "--token-auth-file", p.TokenFile,
		"--service-cluster-ip-range", "10.96.0.0/12", "--allow-privileged", "--profiling=false",
		"--service-node-port-range", "30000-32767")
	if err != nil {
		return err
	}
	ctxName := c.Name
	kcfg.Clusters[ctxName] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: p.CAData}
	kcfg.AuthInfos[ctxName+"-admin"] = &clientcmdapi.AuthInfo{Token: p.Token}
	kcfg.Contexts[ctxName] = &clientcmdapi.Context{Cluster: ctxName, AuthInfo: ctxName + "-admin"}
	// A per-component kubeconfig holding only this cluster, for its controllers.
	own := clientcmdapi.NewConfig()
	own.Clusters["c"] = kcfg.Clusters[ctxName]
	own.AuthInfos["a"] = kcfg.AuthInfos[ctxName+"-admin"]
	own.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "a"}
	own.CurrentContext = "c"
	ownPath := filepath.Join(c.DataDir, "kubeconfig")
	if err := clientcmd.WriteToFile(*own, ownPath); err != nil {
		return fmt.Errorf("write %s kubeconfig: %w", c.Name, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", ownPath)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, c.Name+" kube-apiserver readiness", 90*time.Second, []*Proc{etcd, api}, func(ctx context.Context) (bool, error) {
		rc, err := rest.RESTClientFor(withDefaults(cfg))
		if err != nil {
			return false, err
		}
		res := rc.Get().AbsPath("/readyz").Do(ctx)
		var code int
		res.StatusCode(&code)
		return code == 200, res.Error()
	}); err != nil {
		return err
	}
	kcm, err := start("kube-controller-manager", filepath.Join(s.BinDir, BinControllerManager),
		"--kubeconfig", ownPath, "--authentication-kubeconfig", ownPath, "--authorization-kubeconfig", ownPath,
		"--leader-elect=false", "--controllers=*,-serviceaccount-token,-csrsigning,-nodeipam",
		"--secure-port=0", "--service-cluster-ip-range", "10.96.0.0/12", "--root-ca-file", p.CACert,
		"--concurrent-deployment-syncs=10", "--node-monitor-grace-period=3600s")
	if err != nil {
		return err
	}
	sched, err := start("kube-scheduler", filepath.Join(s.BinDir, BinScheduler),
		"--kubeconfig", ownPath, "--authentication-kubeconfig", ownPath, "--authorization-kubeconfig", ownPath,
		"--leader-elect=false", "--secure-port=0")
	if err != nil {
		return err
	}
	kwokPort := ports[3]
	kwok, err := start("kwok", filepath.Join(s.BinDir, BinKwok),
		"--kubeconfig", ownPath, "--manage-all-nodes=true", "--node-ip", c.NodeIP,
		"--server-address", fmt.Sprintf("%s:%d", bindHost, kwokPort), "--cidr", fmt.Sprintf("10.244.%d.0/24", c.Index))
	if err != nil {
		return err
	}
	// Catch a controller that dies at once (bad flag, port in use): waitReady watches them later.
	return settle(ctx, time.Second, kcm, sched, kwok)
}

// pickPorts returns n distinct free ports on host (inside the cluster's namespace when isolated:
// its addresses are its own, so any port there is free).
func pickPorts(c *Cluster, host string, n int) ([]int, error) {
	if c.Netns != "" {
		base := 20000 + c.Index*10
		ports := make([]int, n)
		for i := range ports {
			ports[i] = base + i
		}
		return ports, nil
	}
	seen := map[int]bool{}
	var ports []int
	for len(ports) < n {
		p, err := freePort(host)
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports, nil
}

func withDefaults(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = clientScheme()
	c.Timeout = 5 * time.Second
	return c
}

// waitReady waits until the cluster schedules and runs pods: its node is Ready and the default
// ServiceAccount exists (kube-controller-manager works).
func (s *Sandbox) waitReady(ctx context.Context, c *Cluster) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	if err := ensureNode(ctx, cs, c); err != nil {
		return err
	}
	procs := s.clusterProcs(c)
	if err := waitFor(ctx, c.Name+" node Ready (kwok)", 60*time.Second, procs, func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, nodeName(c), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return err
	}
	return waitFor(ctx, c.Name+" default ServiceAccount (kube-controller-manager)", 60*time.Second, procs, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

func (s *Sandbox) clusterProcs(c *Cluster) []*Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Proc
	for _, p := range s.procs {
		if strings.HasPrefix(p.Name, c.Name+"/") {
			out = append(out, p)
		}
	}
	return out
}

func nodeName(c *Cluster) string { return c.Name + "-node" }

// ensureNode registers the kwok fake node of the cluster.
func ensureNode(ctx context.Context, cs kubernetes.Interface, c *Cluster) error {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        nodeName(c),
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				"kubernetes.io/hostname": nodeName(c), "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
				"type": "kwok", "node-role.kubernetes.io/control-plane": "",
			},
		},
		Status: corev1.NodeStatus{
			Capacity: capacity, Allocatable: capacity,
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: c.NodeIP}, {Type: corev1.NodeHostName, Address: nodeName(c)}},
		},
	}
	_, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", node.Name, err)
	}
	return nil
}

// Down stops every process the sandbox started (by PID file, so it works from another process)
// and removes its network namespaces. Data stays in Dir for inspection.
func (s *Sandbox) Down() error {
	if s.stopCtrl != nil {
		s.stopCtrl()
		<-s.ctrlDone
		s.stopCtrl = nil
	}
	stopAllPIDs(filepath.Join(s.Dir, "pids"))
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	for _, p := range procs {
		stopPID(p.PID, p.Binary, 5*time.Second)
	}
	teardownNetwork(s)
	_ = os.Remove(filepath.Join(s.Dir, stateFile))
	s.logf("down: stopped %s", s.Dir)
	return nil
}

// LogDir is where component and pod logs go.
func (s *Sandbox) LogDir() string { return filepath.Join(s.Dir, "logs") }

// SetKnobs sets keys of the stand-in's knob ConfigMap (kube-system/ks-mc-sandbox) on the cluster,
// e.g. fakeks.KnobLoadBalancer: "true".
func (c *Cluster) SetKnobs(ctx context.Context, kv map[string]string) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	cms := cs.CoreV1().ConfigMaps(fakeks.KnobsNamespace)
	cm, err := cms.Get(ctx, fakeks.KnobsConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fakeks.KnobsConfigMap, Namespace: fakeks.KnobsNamespace}, Data: kv}
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	for k, v := range kv {
		cm.Data[k] = v
	}
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

// StopCluster stops one cluster's control plane (etcd, kube-apiserver, …), as if the machine were
// gone; its process-backed pods keep running. For tests of a member that is gone.
func (s *Sandbox) StopCluster(name string) error {
	c := s.Cluster(name)
	if c == nil {
		return fmt.Errorf("no cluster %q in the sandbox", name)
	}
	for _, p := range s.clusterProcs(c) {
		stopPID(p.PID, p.Binary, 5*time.Second)
	}
	return nil
}
