package sandbox

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/version"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

var defaultImageRepository = version.ImageRepository

func clientScheme() runtime.NegotiatedSerializer { return scheme.Codecs.WithoutConversion() }

// ownKubeconfig is the kubeconfig holding only this cluster (what its pods get as KUBECONFIG).
func (c *Cluster) ownKubeconfig(s *State) string {
	return filepath.Join(s.Dir, "clusters", c.Name, "kubeconfig")
}

// startControllers installs the KubeSphere stand-in and runs its controllers and the pod runner,
// in-process or as a separate process (Options.ControllersExe).
func (s *Sandbox) startControllers(ctx context.Context, o Options) error {
	for _, c := range s.Clusters {
		cfg, err := c.RESTConfig()
		if err != nil {
			return err
		}
		cl, err := fakeks.NewClients(cfg)
		if err != nil {
			return err
		}
		s.logf("installing the KubeSphere 3.4 stand-in on %s", c.Name)
		if err := fakeks.Install(ctx, cl); err != nil {
			return fmt.Errorf("install KubeSphere stand-in on %s: %w", c.Name, err)
		}
	}
	if o.ControllersExe != "" {
		p, err := startProc(procOptions{
			Name: "sandbox/controllers", Binary: o.ControllersExe, Args: []string{"controllers", "--dir", s.Dir},
			Env: []string{"KSMC_BINARY=" + s.Binary}, Dir: s.Dir,
			LogPath: filepath.Join(s.LogDir(), "controllers.log"), PIDDir: filepath.Join(s.Dir, "pids"), Detach: o.Detach,
		})
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.procs = append(s.procs, p)
		s.mu.Unlock()
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(s.LogDir(), "controllers.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithCancel(context.Background())
	s.stopCtrl = cancel
	s.ctrlDone = make(chan struct{})
	go func() {
		defer close(s.ctrlDone)
		defer logf.Close()
		_ = RunControllers(cctx, &s.State, &syncWriter{w: logf})
	}()
	return nil
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(append([]byte(time.Now().Format("15:04:05.000 ")), p...))
}

// RunControllers runs, for every cluster of the sandbox, the stand-in's ks-installer,
// ks-controller-manager, load balancer and Tower, and the process-backed pod runner, until ctx ends.
func RunControllers(ctx context.Context, st *State, log io.Writer) error {
	var wg sync.WaitGroup
	clients := map[string]*fakeks.Clients{}
	raws := map[string][]byte{}
	var peers []fakeks.Peer
	for _, c := range st.Clusters {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.ownKubeconfig(st))
		if err != nil {
			return fmt.Errorf("load %s kubeconfig: %w", c.Name, err)
		}
		cfg.QPS, cfg.Burst = 50, 100
		cl, err := fakeks.NewClients(cfg)
		if err != nil {
			return err
		}
		raw, err := os.ReadFile(c.ownKubeconfig(st))
		if err != nil {
			return err
		}
		clients[c.Name] = cl
		raws[c.Name] = raw
		peers = append(peers, fakeks.Peer{Name: c.Name, Clients: cl, Kubeconfig: raw})
	}
	for _, c := range st.Clusters {
		cl := clients[c.Name]
		var others []fakeks.Peer
		for _, p := range peers {
			if p.Name != c.Name {
				others = append(others, p)
			}
		}
		prefix := func(component string) io.Writer {
			return &prefixWriter{w: log, prefix: c.Name + " " + component + ": "}
		}
		runners := []func(context.Context){
			(&fakeks.Installer{Clients: cl, Log: prefix("stand-in")}).Run,
			(&fakeks.ControllerManager{Clients: cl, NodeIP: c.NodeIP, Kubeconfig: raws[c.Name], Log: prefix("stand-in")}).Run,
			// ks-controller-manager's Cluster webhook, served from this process.
			(&fakeks.ClusterWebhook{Clients: cl, NodeIP: c.NodeIP, BindAddress: webhookBindAddress(st, c), Log: prefix("stand-in")}).Run,
			(&fakeks.LoadBalancer{Clients: cl, NodeIP: c.NodeIP, Log: prefix("stand-in")}).Run,
			(&fakeks.Tower{Host: cl, NodeIP: c.NodeIP, Peers: others, Log: prefix("stand-in"), RealAgents: st.TowerAgentBinary != ""}).Run,
			(&PodRunner{
				Kube: cl.Kube, Cluster: c, Binary: st.Binary, ImageRepository: st.ImageRepository, TowerAgentBinary: st.TowerAgentBinary,
				Kubeconfig: c.ownKubeconfig(st), Dir: filepath.Join(st.Dir, "pods", c.Name),
				LogDir: filepath.Join(st.Dir, "logs"), PIDDir: filepath.Join(st.Dir, "pids"),
				Log: prefix("pods"),
			}).Run,
		}
		for _, r := range runners {
			wg.Add(1)
			go func() { defer wg.Done(); r(ctx) }()
		}
	}
	wg.Wait()
	return nil
}

// webhookBindAddress is an address of this (root network namespace) process that c's
// kube-apiserver can dial: loopback, or the root end of the router's veth when c runs in a
// network namespace of its own.
func webhookBindAddress(st *State, c *Cluster) string {
	if c.Netns == "" {
		return "127.0.0.1"
	}
	return netPrefix(&Sandbox{State: *st}) + ".0.2"
}

type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// waitStandIn waits until the stand-in's Deployments rolled out and its installer ran once.
func (s *Sandbox) waitStandIn(ctx context.Context, c *Cluster) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	return waitFor(ctx, c.Name+" KubeSphere stand-in Deployments available", 120*time.Second, s.clusterProcs(c), func(ctx context.Context) (bool, error) {
		for _, name := range []string{"ks-installer", "ks-apiserver", "ks-controller-manager", "ks-console"} {
			d, err := cs.AppsV1().Deployments(fakeks.Namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if !DeploymentAvailable(d) {
				return false, fmt.Errorf("deployment %s not yet available", name)
			}
		}
		return true, nil
	})
}

// DeploymentAvailable reports whether a Deployment's current generation is fully rolled out.
func DeploymentAvailable(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
		d.Status.AvailableReplicas == want && d.Status.Replicas == want
}
