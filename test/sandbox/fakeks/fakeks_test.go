package fakeks

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	dynfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

func ccWith(t *testing.T, mutate func(spec map[string]any)) *unstructured.Unstructured {
	t.Helper()
	cc := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(defaultCC), &cc.Object); err != nil {
		t.Fatal(err)
	}
	spec, _, _ := unstructured.NestedMap(cc.Object, "spec")
	if mutate != nil {
		mutate(spec)
	}
	_ = unstructured.SetNestedMap(cc.Object, spec, "spec")
	return cc
}

func parse(t *testing.T, s string) map[string]any {
	t.Helper()
	m := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRenderConfigRoles(t *testing.T) {
	existing := strings.Replace(defaultConfig, "JWT", "installjwt", 1)

	out, changed, err := RenderConfig(existing, ccWith(t, nil).Object)
	if err != nil || changed || out != existing {
		t.Fatalf("a role-none CC must keep the config as is: changed=%v err=%v", changed, err)
	}

	host := ccWith(t, func(s map[string]any) {
		s["multicluster"] = map[string]any{"clusterRole": "host", "proxyPublishAddress": "http://1.2.3.4:30080"}
	})
	out, changed, err = RenderConfig(existing, host.Object)
	if err != nil || changed {
		t.Fatalf("host: changed=%v err=%v", changed, err)
	}
	cfg := parse(t, out)
	if v, _, _ := unstructured.NestedBool(cfg, "multicluster", "enable"); !v {
		t.Error("host: multicluster.enable must be true")
	}
	if v, _, _ := unstructured.NestedString(cfg, "multicluster", "proxyPublishAddress"); v != "http://1.2.3.4:30080" {
		t.Errorf("host: proxyPublishAddress = %q", v)
	}
	if v, _, _ := unstructured.NestedString(cfg, "authentication", "jwtSecret"); v != "installjwt" {
		t.Error("an empty CC jwtSecret must keep the installed one")
	}
	if v, _, _ := unstructured.NestedString(cfg, "gateway", "repository"); v != "kubesphere/nginx-ingress-controller" {
		t.Error("unrelated keys must survive")
	}

	member := ccWith(t, func(s map[string]any) {
		s["multicluster"] = map[string]any{"clusterRole": "member"}
		s["authentication"] = map[string]any{"jwtSecret": "hostjwt"}
	})
	out, changed, err = RenderConfig(out, member.Object)
	if err != nil || !changed {
		t.Fatalf("member: changed=%v err=%v", changed, err)
	}
	cfg = parse(t, out)
	if v, _, _ := unstructured.NestedString(cfg, "authentication", "jwtSecret"); v != "hostjwt" {
		t.Error("member: jwtSecret not copied from the CC")
	}
	if v, _, _ := unstructured.NestedFieldNoCopy(cfg, "authentication", "oauthOptions", "accessTokenMaxAge"); v != int64(0) && v != float64(0) {
		t.Errorf("member: accessTokenMaxAge = %v, want 0", v)
	}
	if v, _, _ := unstructured.NestedBool(cfg, "multicluster", "enable"); v {
		t.Error("member: multicluster.enable must be false")
	}
	if _, found, _ := unstructured.NestedString(cfg, "multicluster", "proxyPublishAddress"); found {
		t.Error("member: proxyPublishAddress must go when the CC has none")
	}
}

func newFakeClients(t *testing.T, objs ...runtime.Object) *Clients {
	t.Helper()
	kube := kubefake.NewSimpleClientset(objs...)
	scheme := runtime.NewScheme()
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{CCGVR: "ClusterConfigurationList", ClusterGVR: "ClusterList"})
	return &Clients{Config: &rest.Config{Host: "https://127.0.0.1:6443"}, Kube: kube, Dynamic: dyn}
}

func TestInstallerRunMakesHost(t *testing.T) {
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: Namespace},
		Data: map[string]string{ConfigKey: strings.Replace(defaultConfig, "JWT", "j", 1)}}
	knobs := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: KnobsConfigMap, Namespace: KnobsNamespace},
		Data: map[string]string{KnobInstallerDelay: "1ms"}}
	c := newFakeClients(t, cm, knobs)
	cc := ccWith(t, func(s map[string]any) { s["multicluster"] = map[string]any{"clusterRole": "host"} })
	if _, err := c.Dynamic.Resource(CCGVR).Namespace(Namespace).Create(ctx, cc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	in := &Installer{Clients: c, Log: &strings.Builder{}}
	if err := in.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := c.Dynamic.Resource(CCGVR).Namespace(Namespace).Get(ctx, CCName, metav1.GetOptions{})
	if s, _, _ := unstructured.NestedString(got.Object, "status", "multicluster", "status"); s != "enabled" {
		t.Fatalf("status.multicluster.status = %q", s)
	}
	if _, err := c.Kube.AppsV1().Deployments(Namespace).Get(ctx, "tower", metav1.GetOptions{}); err != nil {
		t.Fatalf("tower deployment: %v", err)
	}
	svc, err := c.Kube.CoreV1().Services(Namespace).Get(ctx, "tower", metav1.GetOptions{})
	if err != nil || svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		t.Fatalf("tower service: %v %v", svc, err)
	}
	// A second reconcile without a spec change is not a run.
	log := in.Log.(*strings.Builder)
	before := log.Len()
	if err := in.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if log.Len() != before {
		t.Fatalf("no-op reconcile logged %q", log.String()[before:])
	}
}

func TestInstallerFailureKnobWritesNoStatus(t *testing.T) {
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: Namespace},
		Data: map[string]string{ConfigKey: strings.Replace(defaultConfig, "JWT", "j", 1)}}
	knobs := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: KnobsConfigMap, Namespace: KnobsNamespace},
		Data: map[string]string{KnobInstallerDelay: "1ms", KnobInstallerFail: "true"}}
	c := newFakeClients(t, cm, knobs)
	cc := ccWith(t, func(s map[string]any) { s["multicluster"] = map[string]any{"clusterRole": "host"} })
	c.Dynamic.Resource(CCGVR).Namespace(Namespace).Create(ctx, cc, metav1.CreateOptions{})
	log := &strings.Builder{}
	if err := (&Installer{Clients: c, Log: log}).reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := c.Dynamic.Resource(CCGVR).Namespace(Namespace).Get(ctx, CCName, metav1.GetOptions{})
	if _, found, _ := unstructured.NestedMap(got.Object, "status"); found {
		t.Fatal("a failed run must not write status")
	}
	if !strings.Contains(log.String(), "failed") {
		t.Fatalf("log: %q", log.String())
	}
}

func TestRouteService(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "mc-m1", Namespace: Namespace},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.5.5", Ports: []corev1.ServicePort{{Name: "kubernetes", Port: 6443, TargetPort: intstr.FromInt32(6001)}}}}
	m := &ControllerManager{Clients: newFakeClients(t, svc), NodeIP: "127.100.1.1"}
	cfg := &rest.Config{Host: "https://10.96.5.5:6443"}
	if err := m.routeService(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.100.1.1:6001" || cfg.TLSClientConfig.ServerName != "10.96.5.5" {
		t.Fatalf("routed to %s (server name %q)", cfg.Host, cfg.TLSClientConfig.ServerName)
	}
	other := &rest.Config{Host: "https://192.0.2.1:6443"}
	_ = m.routeService(context.Background(), other)
	if other.Host != "https://192.0.2.1:6443" {
		t.Fatalf("an address that is no ClusterIP must stay: %s", other.Host)
	}
}

func TestSetCondition(t *testing.T) {
	c := &unstructured.Unstructured{Object: map[string]any{}}
	SetCondition(c, "Ready", "False", "R", "m", "t1")
	SetCondition(c, "Ready", "False", "R", "m", "t2") // unchanged: times stay
	conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	if len(conds) != 1 || conds[0].(map[string]any)["lastUpdateTime"] != "t1" {
		t.Fatalf("conditions = %v", conds)
	}
	SetCondition(c, "Ready", "True", "Ready", "Cluster is available now", "t3")
	conds, _, _ = unstructured.NestedSlice(c.Object, "status", "conditions")
	got := conds[0].(map[string]any)
	if got["lastTransitionTime"] != "t3" || got["status"] != "True" {
		t.Fatalf("transition not recorded: %v", got)
	}
}

func TestTowerConnectsOnlyAMatchingAgent(t *testing.T) {
	ctx := context.Background()
	tower := deployment("tower", TowerImage, map[string]string{"app": "tower"})
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: Namespace},
		Data: map[string]string{ConfigKey: "multicluster:\n  proxyPublishAddress: http://198.51.100.1:30080\n"}}
	host := newFakeClients(t, tower, cm)
	cluster := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster", "metadata": map[string]any{"name": "m1"},
		"spec": map[string]any{"joinFederation": true, "connection": map[string]any{"type": "proxy", "token": "preset-token"}},
	}}
	if _, err := host.Dynamic.Resource(ClusterGVR).Create(ctx, cluster, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agentWith := func(token, proxy string) *Clients {
		d := deployment("cluster-agent", TowerImage, map[string]string{"app": "agent"})
		d.Spec.Template.Spec.Containers[0].Command = []string{"/agent", "--name=m1", "--token=" + token, "--proxy-server=" + proxy}
		d.Status.AvailableReplicas, d.Status.UpdatedReplicas = 1, 1
		return newFakeClients(t, d)
	}
	for _, tc := range []struct {
		name, token, proxy, want string
	}{
		{"wrong token", "other", "http://198.51.100.1:30080", "False"},
		{"wrong address", "preset-token", "http://198.51.100.9:30080", "False"},
		{"matching agent", "preset-token", "http://198.51.100.1:30080", "True"},
	} {
		log := &strings.Builder{}
		tw := &Tower{Host: host, Peers: []Peer{{Name: "member", Clients: agentWith(tc.token, tc.proxy), Kubeconfig: []byte("kubeconfig")}}, Log: log}
		if err := tw.reconcile(ctx); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, _ := host.Dynamic.Resource(ClusterGVR).Get(ctx, "m1", metav1.GetOptions{})
		if s := condStatus(got, "AgentAvailable"); s != tc.want {
			t.Errorf("%s: AgentAvailable=%s, want %s (log %q)", tc.name, s, tc.want, log.String())
		}
		if tok, _, _ := unstructured.NestedString(got.Object, "spec", "connection", "token"); tok != "preset-token" {
			t.Errorf("%s: the preset token was replaced", tc.name)
		}
		if strings.Contains(log.String(), "preset-token") || strings.Contains(log.String(), "--token=") {
			t.Errorf("%s: a token reached the log: %q", tc.name, log.String())
		}
	}
	if _, err := host.Kube.CoreV1().Services(Namespace).Get(ctx, "mc-m1", metav1.GetOptions{}); err != nil {
		t.Errorf("Service mc-m1: %v", err)
	}
}

func condStatus(c *unstructured.Unstructured, typ string) string {
	conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	for _, raw := range conds {
		if m, ok := raw.(map[string]any); ok && m["type"] == typ {
			s, _ := m["status"].(string)
			return s
		}
	}
	return ""
}
