package kube

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// Kubernetes-side names of the contract.
const (
	// KubeSpherePortOffset: kubesphereAPIServerPort = kubernetesAPIServerPort + 10000.
	KubeSpherePortOffset = 10000
	// AdminUser is the client certificate's CN in the kubeconfig written into the Cluster.
	AdminUser = "kubernetes-admin"
)

// AgentDialer is what the controller needs from the proxy.
type AgentDialer interface {
	tunnel.StreamDialer
	Agents(cluster string) int
}

// ControllerConfig configures the proxy's Kubernetes side.
type ControllerConfig struct {
	Dynamic dynamic.Interface
	Kube    kubernetes.Interface
	// Namespace holds the mc-<name> Services (kubesphere-system).
	Namespace string
	// BindAddress is where the per-cluster listeners listen.
	BindAddress string
	CA          *tunnel.CA
	// PortMin..PortMax is the kubernetesAPIServerPort range (6000–7000).
	PortMin, PortMax int
	Resync           time.Duration
	HandshakeTimeout time.Duration
	Logger           *logr.Logger
}

// DefaultControllerConfig returns the contract's defaults.
func DefaultControllerConfig() *ControllerConfig {
	return &ControllerConfig{Namespace: kubesphere.Namespace, BindAddress: "0.0.0.0", PortMin: 6000, PortMax: 7000,
		Resync: 10 * time.Minute, HandshakeTimeout: 10 * time.Second}
}

// Validate reports the first invalid field.
func (c *ControllerConfig) Validate() error {
	switch {
	case c == nil:
		return fmt.Errorf("%w: nil controller config", tunnel.ErrInvalidConfig)
	case c.Dynamic == nil || c.Kube == nil:
		return fmt.Errorf("%w: controller needs Kubernetes clients", tunnel.ErrInvalidConfig)
	case c.CA == nil:
		return fmt.Errorf("%w: controller needs the proxy CA", tunnel.ErrInvalidConfig)
	case c.Namespace == "":
		return fmt.Errorf("%w: namespace is required", tunnel.ErrInvalidConfig)
	case c.PortMin < 1 || c.PortMax < c.PortMin || c.PortMax+KubeSpherePortOffset > 65535:
		return fmt.Errorf("%w: invalid port range %d-%d", tunnel.ErrInvalidConfig, c.PortMin, c.PortMax)
	case c.Resync <= 0:
		return fmt.Errorf("%w: resync must be positive", tunnel.ErrInvalidConfig)
	}
	return nil
}

// Controller watches Clusters on the host and implements the Kubernetes-side contract: ports,
// token, Service, endpoints, conditions, kubeconfig, and the per-cluster listeners while an agent is
// connected. It is also the proxy's Authenticator.
type Controller struct {
	cfg      ControllerConfig
	log      logr.Logger
	informer cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[string]

	mu        sync.Mutex
	proxy     AgentDialer
	ports     map[string]int // reservations: cluster → kubernetesAPIServerPort
	listeners map[string]*servedCluster
	refused   map[string]refusal // Cluster updates the apiserver refused, retried with backoff
}

// refusal is a Cluster update the apiserver refused (say KubeSphere 3.4's webhook while the
// member is unreachable): the same update is not retried before until; a different one (the
// agent came back) is tried at once.
type refusal struct {
	connected bool
	delay     time.Duration
	until     time.Time
}

// Backoff of refused Cluster updates.
const (
	refusedMinDelay = time.Second
	refusedMaxDelay = 2 * time.Minute
)

type servedCluster struct {
	l         *tunnel.ClusterListener
	port      int
	clusterIP string
}

// NewController validates cfg and builds the informer; call SetProxy before Run.
func NewController(cfg *ControllerConfig) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{cfg: *cfg, ports: map[string]int{}, listeners: map[string]*servedCluster{}, refused: map[string]refusal{}}
	c.log = klog.Background().WithName("controller")
	if cfg.Logger != nil {
		c.log = *cfg.Logger
	}
	f := dynamicinformer.NewDynamicSharedInformerFactory(cfg.Dynamic, cfg.Resync)
	c.informer = f.ForResource(kubesphere.ClusterGVR).Informer()
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "clusters"})
	_, err := c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueObj,
		UpdateFunc: func(_, n any) { c.enqueueObj(n) },
		DeleteFunc: c.enqueueObj,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// SetProxy connects the controller to the proxy that holds the agent sessions.
func (c *Controller) SetProxy(p AgentDialer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.proxy = p
}

// AgentChanged is the proxy's OnAgentChange hook.
func (c *Controller) AgentChanged(cluster string) { c.queue.Add(cluster) }

func (c *Controller) enqueueObj(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err == nil {
		c.revalidate(key)
		c.queue.Add(key)
	}
}

func (c *Controller) cluster(name string) (*unstructured.Unstructured, *Cluster, error) {
	obj, ok, err := c.informer.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil, nil, err
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, nil, fmt.Errorf("unexpected object %T", obj)
	}
	cl, err := ClusterFromUnstructured(u)
	return u, cl, err
}

// Authenticate implements Authenticator from the informer cache.
func (c *Controller) Authenticate(cluster, token string) error {
	_, err := c.AuthenticateIdentity(cluster, token)
	return err
}

// AuthenticateIdentity implements IdentityAuthenticator: the identity is the Cluster's UID, so a
// Cluster deleted and created again under the same name revokes the sessions of the old one.
func (c *Controller) AuthenticateIdentity(cluster, token string) (string, error) {
	_, cl, err := c.cluster(cluster)
	if err != nil || cl == nil || !cl.Served() {
		_ = tunnel.TokenEqual(tunnel.UnknownClusterToken, token) // the same work as a wrong token
		return "", fmt.Errorf("cluster %q: %w", cluster, tunnel.ErrUnknownCluster)
	}
	if !tunnel.TokenEqual(cl.Spec.Connection.Token, token) {
		return "", fmt.Errorf("cluster %q: %w", cluster, tunnel.ErrUnauthorized)
	}
	return string(cl.UID), nil
}

// sessionRevalidator is implemented by *Proxy.
type sessionRevalidator interface{ Revalidate(cluster string) int }

// revalidate closes the agent sessions of cluster that its current state no longer admits (token
// rotated, Cluster deleted or recreated). It runs in the informer's event handler, after the cache
// was updated, so a revoked agent is cut off as soon as the proxy sees the change.
func (c *Controller) revalidate(cluster string) {
	c.mu.Lock()
	p := c.proxy
	c.mu.Unlock()
	if r, ok := p.(sessionRevalidator); ok {
		r.Revalidate(cluster)
	}
}

// HasSynced reports whether the Cluster cache is filled.
func (c *Controller) HasSynced() bool { return c.informer.HasSynced() }

// Run starts the informer, removes Services of Clusters that are gone, and reconciles until ctx is
// done. The per-cluster listeners are left open: call Close (or StopAccepting first, to drain).
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer c.queue.ShutDown()
	go c.informer.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return fmt.Errorf("wait for the Cluster cache: %w", ctx.Err())
	}
	if err := c.removeOrphans(ctx); err != nil {
		c.log.Error(err, "remove Services of deleted Clusters")
	}
	for i := 0; i < workers; i++ {
		go wait.UntilWithContext(ctx, c.worker, time.Second)
	}
	<-ctx.Done()
	return nil
}

func (c *Controller) worker(ctx context.Context) {
	for {
		name, quit := c.queue.Get()
		if quit {
			return
		}
		err := c.reconcile(ctx, name)
		if err != nil && ctx.Err() == nil {
			c.log.Error(err, "reconcile", "cluster", name)
			c.queue.AddRateLimited(name)
		} else {
			c.queue.Forget(name)
		}
		c.queue.Done(name)
	}
}

// StopAccepting closes the listeners of every cluster but lets their connections finish.
func (c *Controller) StopAccepting() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.listeners {
		s.l.StopAccepting()
	}
}

// Close stops every per-cluster listener and its connections.
func (c *Controller) Close() {
	c.mu.Lock()
	ls := c.listeners
	c.listeners = map[string]*servedCluster{}
	c.mu.Unlock()
	for _, s := range ls {
		_ = s.l.Close()
	}
}

// ListenerAddr returns the bound address of a cluster's kube listener (nil when not serving).
func (c *Controller) ListenerAddr(cluster string) net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.listeners[cluster]; s != nil {
		return s.l.KubeAddr()
	}
	return nil
}
