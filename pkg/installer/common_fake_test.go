package installer

import (
	"context"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// A ClusterConfiguration like a fresh KubeSphere 3.4 one, plus fields ks-mc does not know about.
const testCCYAML = `apiVersion: installer.kubesphere.io/v1alpha1
kind: ClusterConfiguration
metadata:
  name: ks-installer
  namespace: kubesphere-system
  labels:
    version: v3.4.1
spec:
  authentication:
    jwtSecret: ""
  etcd:
    monitoring: false
    port: 2379
  futureFeature:
    enabled: true
    weights: [1, 2.5, 3]
    nested: {deep: {value: "kept"}}
  multicluster:
    clusterRole: none
    someNewKnob: 42
  network:
    ippool:
      type: none
status:
  core:
    status: enabled
    version: v3.4.1
`

const testKSConfig = `authentication:
  jwtSecret: "Zk3sPq8Lm2Vx9Nt4Rb7Wc1Yd6Hf0Ja5G"
  maximumClockSkew: 10s
  oauthOptions:
    accessTokenMaxAge: 2h
multicluster:
  clusterRole: none
  enable: false
  agentImage: kubesphere/tower:v0.2.1
  proxyPublishService: tower.kubesphere-system.svc
`

type fakeCluster struct {
	t    *testing.T
	kube *fake.Clientset
	dyn  *dynamicfake.FakeDynamicClient
	c    *Clients
	// denied verbs/resources for SelfSubjectAccessReview ("patch clusterconfigurations").
	denied map[string]bool
	mu     sync.Mutex
}

func loadCC(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

func one() *int32 { v := int32(1); return &v }

func readyDeployment(name string, labels map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kubesphere.Namespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: one(), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{ServiceAccountName: "kubesphere", Containers: []corev1.Container{{Name: name, Image: "kubesphere/" + name + ":v3.4.1"}}},
			},
		},
		Status: appsv1.DeploymentStatus{Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1},
	}
}

// newFakeCluster returns a fresh KubeSphere 3.4 cluster (role none) with one node.
func newFakeCluster(t *testing.T, ccDoc string, extra ...runtime.Object) *fakeCluster {
	t.Helper()
	objs := []runtime.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: kubesphere.ConfigName, Namespace: kubesphere.Namespace},
			Data: map[string]string{kubesphere.ConfigKey: testKSConfig}},
		readyDeployment(kubesphere.APIServerName, map[string]string{"app": "ks-apiserver"}),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "10.0.0.2"}, {Type: corev1.NodeExternalIP, Address: "203.0.113.2"}}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeHostName, Address: "node-a"}}}},
	}
	objs = append(objs, extra...)
	fc := &fakeCluster{t: t, kube: fake.NewClientset(objs...), denied: map[string]bool{}}
	scheme := runtime.NewScheme()
	fc.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList", {Group: "cluster.kubesphere.io", Version: "v1alpha1", Resource: "clusters"}: "ClusterList"}, loadCC(t, ccDoc))
	fc.kube.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview)
		attr := r.Spec.ResourceAttributes
		fc.mu.Lock()
		deny := fc.denied[attr.Verb+" "+attr.Resource]
		fc.mu.Unlock()
		out := r.DeepCopy()
		out.Status.Allowed = !deny
		return true, out, nil
	})
	fc.c = &Clients{Kube: fc.kube, Dynamic: fc.dyn, Context: "test-host"}
	return fc
}

func (fc *fakeCluster) cc() *ClusterConfiguration {
	fc.t.Helper()
	cc, err := GetClusterConfiguration(context.Background(), fc.c)
	if err != nil {
		fc.t.Fatal(err)
	}
	return cc
}

// mutations lists the actions that would change the cluster (SelfSubjectAccessReviews aside).
func (fc *fakeCluster) mutations() []k8stesting.Action {
	var out []k8stesting.Action
	for _, list := range [][]k8stesting.Action{fc.kube.Actions(), fc.dyn.Actions()} {
		for _, a := range list {
			switch a.GetVerb() {
			case "get", "list", "watch":
				continue
			}
			if a.GetResource().Resource == "selfsubjectaccessreviews" {
				continue
			}
			out = append(out, a)
		}
	}
	return out
}

func (fc *fakeCluster) clearActions() {
	fc.kube.ClearActions()
	fc.dyn.ClearActions()
}

// towerService is the Service ks-installer creates, with a NodePort and optionally an LB ingress.
func towerService(ingressIP string) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: kubesphere.TowerName, Namespace: kubesphere.Namespace},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "tower"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080), NodePort: 31234}}},
	}
	if ingressIP != "" {
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ingressIP}}
	}
	return s
}

func towerDeployment() *appsv1.Deployment {
	d := readyDeployment(kubesphere.TowerName, map[string]string{"app": "tower", "app.kubernetes.io/name": "tower"})
	c := &d.Spec.Template.Spec.Containers[0]
	c.Image = "kubesphere/tower:v0.2.1"
	c.Command = []string{"/proxy", "--ca-cert=/ca/ca.crt", "--ca-key=/ca/ca.key", "--v=3"}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "ca", MountPath: "/ca"}}
	d.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "tower-ca"}}}}
	return d
}

// fakeInstaller plays ks-installer against the fake clients until the returned stop is called:
// on a spec change it re-renders kubesphere-config and, for role host, creates tower (once) and
// sets status.multicluster. lbIP, when set, is given to the tower Service.
func (fc *fakeCluster) fakeInstaller(lbIP string, fail bool) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := ""
		for ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
			cc, err := GetClusterConfiguration(ctx, fc.c)
			if err != nil {
				continue
			}
			spec, _ := yaml.Marshal(cc.Object.Object["spec"])
			if string(spec) == last {
				continue
			}
			last = string(spec)
			if fail {
				continue
			}
			cm, err := fc.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Get(ctx, kubesphere.ConfigName, metav1.GetOptions{})
			if err != nil {
				continue
			}
			raw := map[string]any{}
			_ = yaml.Unmarshal([]byte(cm.Data[kubesphere.ConfigKey]), &raw)
			_ = unstructured.SetNestedField(raw, cc.ClusterRole(), "multicluster", "clusterRole")
			_ = unstructured.SetNestedField(raw, cc.ClusterRole() == kubesphere.RoleHost, "multicluster", "enable")
			if a := cc.ProxyPublishAddress(); a != "" {
				_ = unstructured.SetNestedField(raw, a, "multicluster", "proxyPublishAddress")
			}
			b, _ := yaml.Marshal(raw)
			cm.Data[kubesphere.ConfigKey] = string(b)
			_, _ = fc.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
			if cc.ClusterRole() == kubesphere.RoleHost && cc.ComponentStatus("multicluster") != "enabled" {
				_, _ = fc.kube.AppsV1().Deployments(kubesphere.Namespace).Create(ctx, towerDeployment(), metav1.CreateOptions{})
				_, _ = fc.kube.CoreV1().Services(kubesphere.Namespace).Create(ctx, towerService(lbIP), metav1.CreateOptions{})
				obj := cc.Object.DeepCopy()
				_ = unstructured.SetNestedField(obj.Object, "enabled", "status", "multicluster", "status")
				_, _ = fc.dyn.Resource(kubesphere.ClusterConfigurationGVR).Namespace(kubesphere.Namespace).Update(ctx, obj, metav1.UpdateOptions{})
			}
		}
	}()
	return func() { cancel(); <-done }
}

// recorder is a Reporter that keeps everything.
type recorder struct {
	mu                    sync.Mutex
	steps, warns, progres []string
}

func (r *recorder) Step(m string)     { r.mu.Lock(); r.steps = append(r.steps, m); r.mu.Unlock() }
func (r *recorder) Warn(m string)     { r.mu.Lock(); r.warns = append(r.warns, m); r.mu.Unlock() }
func (r *recorder) Progress(m string) { r.mu.Lock(); r.progres = append(r.progres, m); r.mu.Unlock() }

// setCCAddress publishes addr in the ClusterConfiguration (as an earlier init-host would have).
func (fc *fakeCluster) setCCAddress(t *testing.T, addr string) {
	t.Helper()
	cc := fc.cc()
	p := MergePatch{}
	p.SetIfDifferent(cc.Object.Object, addr, "spec", "multicluster", "proxyPublishAddress")
	if _, err := PatchClusterConfiguration(context.Background(), fc.c, p, DryRunNone); err != nil {
		t.Fatal(err)
	}
}

// split returns a plan's checks and state (the two results Preflight returned before the
// operation shape).
func split[S any](p *Plan[S]) (*Preflight, S) { return p.Findings(), p.State }
