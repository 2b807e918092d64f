package fakeks

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

// Peer is another sandbox cluster a Tower agent may run in.
type Peer struct {
	Name    string
	Clients *Clients
	// Kubeconfig is an admin kubeconfig of the peer: what a connected Tower agent makes reachable.
	Kubeconfig []byte
}

// Tower plays KubeSphere's Tower (kubesphere/tower) while the host's tower Deployment runs
// KubeSphere's image; it does nothing once ks-mc's bundled proxy replaced it. There is no real
// tunnel: an agent "connects" when a peer cluster runs an available cluster-agent Deployment of
// the Tower image whose --name, --token and --proxy-server match the host (what the real agent
// needs to get through), and the Cluster's kubeconfig then points at the peer directly.
//
// The sandbox runs those agent Deployments for real (test/toweragent's tower-agent, see
// sandbox.PodRunner): while this stand-in plays Tower nothing listens at the published address, so
// the real agents retry (Tower's backoff) and are told apart from it only by the checks below;
// once init-host puts the ks-mc proxy into the tower Deployment, the same agents connect to it
// over Tower's protocol. Each rule follows kubesphere/tower v0.2.1:
//   - a Cluster is served while spec.connection.type is proxy and joinFederation is true, until it
//     is gone (pkg/proxy/proxy.go addCluster/delete);
//   - port from 6000-7000, kubesphereAPIServerPort = port + 10000, a token when the Cluster has
//     none (64 hex digits), Service mc-<name> selecting the tower pods, Initialized
//     (pkg/proxy/proxy.go addCluster, allocatePort, generateToken);
//   - an agent whose --token differs from spec.connection.token is refused ("Unauthorized agent",
//     pkg/proxy/proxy.go handleWebsocket), one that dials another address never reaches the proxy;
//   - on connect AgentAvailable=True "Agent has connected to proxy successfully." and the
//     kubeconfig is issued; with no agent AgentAvailable=False "Agent has not connected to proxy."
//     (pkg/proxy/proxy.go Update).
type Tower struct {
	Host   *Clients
	NodeIP string
	Peers  []Peer
	Log    io.Writer
	// RealAgents: the sandbox runs the Tower agents (test/toweragent): the stand-in accepts them
	// where Tower listens (towerSessions) and an agent is connected while its session is up.
	RealAgents bool

	sess towerSessions
}

// Run loops until ctx ends.
func (tw *Tower) Run(ctx context.Context) {
	if tw.RealAgents {
		tw.sess.tw = tw
		go tw.runListener(ctx)
	}
	for {
		if err := tw.reconcile(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(tw.Log, "tower: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

const towerRepository = "kubesphere/tower"

// runListener keeps the agent listener open exactly while the tower Deployment runs KubeSphere's
// image (checked often: a replaced pod frees its port at once, and the ks-mc proxy takes it).
func (tw *Tower) runListener(ctx context.Context) {
	for {
		if err := tw.sess.sync(tw.active(ctx)); err != nil && ctx.Err() == nil {
			fmt.Fprintf(tw.Log, "tower: %v\n", err)
		}
		select {
		case <-ctx.Done():
			_ = tw.sess.sync(false)
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (tw *Tower) active(ctx context.Context) bool {
	d, err := tw.Host.Kube.AppsV1().Deployments(Namespace).Get(ctx, "tower", metav1.GetOptions{})
	if err != nil || len(d.Spec.Template.Spec.Containers) == 0 {
		return false
	}
	img := d.Spec.Template.Spec.Containers[0].Image
	return strings.HasPrefix(img, towerRepository+":") || img == towerRepository
}

func (tw *Tower) reconcile(ctx context.Context) error {
	if !tw.active(ctx) {
		return nil
	}
	clusters := tw.Host.Dynamic.Resource(ClusterGVR)
	list, err := clusters.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list clusters: %w", err)
	}
	used := map[int64]bool{}
	for _, c := range list.Items {
		if p, _, _ := unstructured.NestedInt64(c.Object, "spec", "connection", "kubernetesAPIServerPort"); p != 0 {
			used[p] = true
		}
	}
	published := tw.publishedAddress(ctx)
	agents := tw.agents(ctx)
	served := map[string]bool{}
	for i := range list.Items {
		c := &list.Items[i]
		typ, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "type")
		join, _, _ := unstructured.NestedBool(c.Object, "spec", "joinFederation")
		// Tower serves a Cluster until it is gone, Terminating or not (kubesphere/tower v0.2.1
		// pkg/proxy/proxy.go: addCluster ignores deletionTimestamp; only the informer's delete
		// stops serving), so KubeSphere 3.4's webhook can still reach the member to admit the
		// finalizer removal.
		if typ != "proxy" || !join {
			continue
		}
		served[c.GetName()] = true
		if err := tw.serve(ctx, c.GetName(), used, published, agents); err != nil {
			fmt.Fprintf(tw.Log, "tower: cluster %s: %v\n", c.GetName(), err)
		}
	}
	// Services of Clusters that are gone.
	svcs, err := tw.Host.Kube.CoreV1().Services(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, s := range svcs.Items {
		if name, ok := strings.CutPrefix(s.Name, "mc-"); ok && s.Labels["app"] == s.Name && !served[name] {
			_ = tw.Host.Kube.CoreV1().Services(Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{})
		}
	}
	return nil
}

// publishedAddress is the proxy address agents must dial: proxyPublishAddress, else the load balancer's.
func (tw *Tower) publishedAddress(ctx context.Context) string {
	if cm, err := tw.Host.Kube.CoreV1().ConfigMaps(Namespace).Get(ctx, ConfigMapName, metav1.GetOptions{}); err == nil {
		cfg := map[string]any{}
		if yaml.Unmarshal([]byte(cm.Data[ConfigKey]), &cfg) == nil {
			if a, _, _ := unstructured.NestedString(cfg, "multicluster", "proxyPublishAddress"); a != "" {
				return a
			}
		}
	}
	svc, err := tw.Host.Kube.CoreV1().Services(Namespace).Get(ctx, "tower", metav1.GetOptions{})
	if err != nil || len(svc.Spec.Ports) == 0 {
		return ""
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" {
			return "http://" + net.JoinHostPort(ing.IP, strconv.Itoa(int(svc.Spec.Ports[0].Port)))
		}
	}
	return ""
}

// agent is a Tower agent Deployment found in a peer.
type agent struct {
	peer                     Peer
	name, token, proxyServer string
	available                bool
}

func (tw *Tower) agents(ctx context.Context) []agent {
	var out []agent
	for _, p := range tw.Peers {
		d, err := p.Clients.Kube.AppsV1().Deployments(Namespace).Get(ctx, "cluster-agent", metav1.GetOptions{})
		if err != nil || len(d.Spec.Template.Spec.Containers) == 0 {
			continue
		}
		c := d.Spec.Template.Spec.Containers[0]
		if !strings.HasPrefix(c.Image, towerRepository+":") {
			continue
		}
		a := agent{peer: p, available: available(d)}
		for _, arg := range append(append([]string{}, c.Command...), c.Args...) {
			k, v, _ := strings.Cut(arg, "=")
			switch k {
			case "--name":
				a.name = v
			case "--token":
				a.token = v
			case "--proxy-server":
				a.proxyServer = v
			}
		}
		out = append(out, a)
	}
	return out
}

func available(d *appsv1.Deployment) bool {
	return d.Status.ObservedGeneration >= d.Generation && d.Status.AvailableReplicas > 0 && d.Status.UpdatedReplicas > 0
}

// serve does for one Cluster what Tower's proxy does: port, token, Service, Initialized; then
// AgentAvailable and the kubeconfig when a matching agent runs.
func (tw *Tower) serve(ctx context.Context, name string, used map[int64]bool, published string, agents []agent) error {
	clusters := tw.Host.Dynamic.Resource(ClusterGVR)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		c, err := clusters.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return client404(err)
		}
		before := mustJSON(c.Object)
		conn, _, _ := unstructured.NestedMap(c.Object, "spec", "connection")
		port, _, _ := unstructured.NestedInt64(conn, "kubernetesAPIServerPort")
		if port == 0 {
			for p := int64(6000); p <= 7000; p++ {
				if !used[p] {
					port = p
					used[p] = true
					break
				}
			}
			conn["kubernetesAPIServerPort"] = port
			conn["kubesphereAPIServerPort"] = port + 10000
		}
		if tok, _ := conn["token"].(string); tok == "" {
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			conn["token"] = hex.EncodeToString(b)
		}
		ip, err := tw.ensureService(ctx, name, port)
		if err != nil {
			return err
		}
		conn["kubernetesAPIEndpoint"] = "https://" + net.JoinHostPort(ip, "6443")
		conn["kubesphereAPIEndpoint"] = "http://" + net.JoinHostPort(ip, "80")
		now := time.Now().UTC().Format(time.RFC3339)
		SetCondition(c, "Initialized", "True", "", "Cluster has been initialized", now)
		connected := false
		for _, a := range agents {
			if a.name != name || !a.available {
				continue
			}
			switch {
			case tw.RealAgents:
				// The agent says for itself whether it got through: a session that passed the
				// config request (token, name) at the address it dials.
				if tw.sess.connected(name) {
					connected = true
					conn["kubeconfig"] = base64.StdEncoding.EncodeToString(a.peer.Kubeconfig)
				}
			case a.token != conn["token"]:
				fmt.Fprintf(tw.Log, "tower: agent in %s for cluster %s refused: token mismatch\n", a.peer.Name, name)
			case a.proxyServer != published:
				fmt.Fprintf(tw.Log, "tower: agent in %s for cluster %s cannot reach the proxy: it dials %s, the proxy is published at %q\n", a.peer.Name, name, a.proxyServer, published)
			default:
				connected = true
				conn["kubeconfig"] = base64.StdEncoding.EncodeToString(a.peer.Kubeconfig)
			}
		}
		if connected {
			SetCondition(c, "AgentAvailable", "True", "", "Agent has connected to proxy successfully.", now)
		} else {
			SetCondition(c, "AgentAvailable", "False", "", "Agent has not connected to proxy.", now)
		}
		_ = unstructured.SetNestedMap(c.Object, conn, "spec", "connection")
		if mustJSON(c.Object) == before {
			return nil
		}
		_, err = clusters.Update(ctx, c, metav1.UpdateOptions{})
		return err
	})
}

func (tw *Tower) ensureService(ctx context.Context, name string, port int64) (string, error) {
	svcName := "mc-" + name
	svcs := tw.Host.Kube.CoreV1().Services(Namespace)
	if s, err := svcs.Get(ctx, svcName, metav1.GetOptions{}); err == nil {
		return s.Spec.ClusterIP, nil
	} else if !apierrors.IsNotFound(err) {
		return "", err
	}
	labels := map[string]string{"app": svcName, "app.kubernetes.io/name": svcName}
	s, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName, Namespace: Namespace, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "tower", "app.kubernetes.io/name": "tower"},
			Ports: []corev1.ServicePort{
				{Name: "kubernetes", Protocol: corev1.ProtocolTCP, Port: 6443, TargetPort: intstr.FromInt32(int32(port))},
				{Name: "kubesphere", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(int32(port + 10000))},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create service %s: %w", svcName, err)
	}
	return s.Spec.ClusterIP, nil
}
