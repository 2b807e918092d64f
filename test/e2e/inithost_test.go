//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// ihCluster bundles a sandbox cluster and its clients for the init-host tests.
type ihCluster struct {
	*sandbox.Cluster
	s    *sandbox.Sandbox
	kube kubernetes.Interface
	dyn  dynamic.Interface
}

func ihOpen(t *testing.T, s *sandbox.Sandbox, name string) *ihCluster {
	t.Helper()
	c := s.Cluster(name)
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &ihCluster{Cluster: c, s: s, kube: k, dyn: d}
}

func (c *ihCluster) cc(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	u, err := c.dyn.Resource(fakeks.CCGVR).Namespace(fakeks.Namespace).Get(context.Background(), fakeks.CCName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ClusterConfiguration of %s: %v", c.Name, err)
	}
	return u
}

func (c *ihCluster) patchCC(t *testing.T, patch string) {
	t.Helper()
	if _, err := c.dyn.Resource(fakeks.CCGVR).Namespace(fakeks.Namespace).Patch(context.Background(), fakeks.CCName,
		types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "e2e-test"}); err != nil {
		t.Fatalf("patch CC of %s: %v", c.Name, err)
	}
}

// ksConfig returns the parsed kubesphere.yaml.
func (c *ihCluster) ksConfig(t *testing.T) map[string]any {
	t.Helper()
	cm, err := c.kube.CoreV1().ConfigMaps(fakeks.Namespace).Get(context.Background(), fakeks.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := yaml.Unmarshal([]byte(cm.Data[fakeks.ConfigKey]), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func ihStr(m map[string]any, path ...string) string {
	v, _, _ := unstructured.NestedFieldNoCopy(m, path...)
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// waitConfig waits until kubesphere-config's multicluster settings read as wanted (the stand-in
// installer finished its run).
func (c *ihCluster) waitConfig(t *testing.T, role, address string) {
	t.Helper()
	eventually(t, 90*time.Second, c.Name+" kubesphere-config role "+role, func() error {
		m := c.ksConfig(t)
		if r, a := ihStr(m, "multicluster", "clusterRole"), ihStr(m, "multicluster", "proxyPublishAddress"); r != role || a != address {
			return fmt.Errorf("clusterRole %q proxyPublishAddress %q", r, a)
		}
		return nil
	})
}

func (c *ihCluster) setKnobs(t *testing.T, kv map[string]string) {
	t.Helper()
	if err := c.Cluster.SetKnobs(context.Background(), kv); err != nil {
		t.Fatal(err)
	}
}

// snapshot records the resourceVersions of everything init-host may change.
type ihSnapshot map[string]string

func (c *ihCluster) snapshot(t *testing.T) ihSnapshot {
	t.Helper()
	ctx := context.Background()
	s := ihSnapshot{"cc": c.cc(t).GetResourceVersion()}
	if cm, err := c.kube.CoreV1().ConfigMaps(fakeks.Namespace).Get(ctx, fakeks.ConfigMapName, metav1.GetOptions{}); err == nil {
		s["kubesphere-config"] = cm.ResourceVersion
	}
	for _, name := range []string{"ks-apiserver", "tower"} {
		d, err := c.kube.AppsV1().Deployments(fakeks.Namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			s["deployment/"+name] = "absent"
		case err != nil:
			t.Fatal(err)
		default:
			s["deployment/"+name] = fmt.Sprintf("generation %d", d.Generation)
		}
	}
	if _, err := c.kube.CoreV1().Services(fakeks.Namespace).Get(ctx, "tower", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		s["service/tower"] = "absent"
	} else {
		s["service/tower"] = "present"
	}
	return s
}

func (s ihSnapshot) assertSame(t *testing.T, what string, now ihSnapshot) {
	t.Helper()
	for k, v := range s {
		if now[k] != v {
			t.Errorf("%s changed %s: %s → %s", what, k, v, now[k])
		}
	}
}

func (c *ihCluster) restartedAt(t *testing.T) string {
	t.Helper()
	d, err := c.kube.AppsV1().Deployments(fakeks.Namespace).Get(context.Background(), "ks-apiserver", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"]
}

func (c *ihCluster) initHost(t *testing.T, args ...string) result {
	t.Helper()
	r := ksmc(t, c.s, append([]string{"init-host", "--context", c.Name}, args...)...)
	t.Logf("kubectl ks-mc init-host --context %s %s → exit %d\nstderr:\n%s", c.Name, strings.Join(args, " "), r.code, r.stderr)
	return r
}

// specWithout returns the CC spec as JSON without the fields init-host owns.
func ihSpecWithout(u *unstructured.Unstructured) string {
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	cp := map[string]any{}
	b, _ := json.Marshal(spec)
	_ = json.Unmarshal(b, &cp)
	unstructured.RemoveNestedField(cp, "multicluster", "clusterRole")
	unstructured.RemoveNestedField(cp, "multicluster", "proxyPublishAddress")
	out, _ := json.Marshal(cp)
	return string(out)
}

func TestInitHost(t *testing.T) {
	s := newSandbox(t, sandbox.Options{Clusters: []string{"pending", "lb", "failing"}})

	t.Run("pending-load-balancer", func(t *testing.T) {
		t.Parallel()
		c := ihOpen(t, s, "pending")
		addr := "http://" + c.NodeIP + ":8080"

		// Fields ks-mc does not know, set by someone else: they must survive every init-host run.
		c.patchCC(t, `{"spec":{"ksmcE2E":{"keep":[1,"two",{"three":3.5}],"empty":{}},"multicluster":{"futureKnob":"x"}}}`)
		c.waitConfig(t, "none", "")
		unknownBefore := ihSpecWithout(c.cc(t))

		// --dry-run (bare = client) and --dry-run=server change nothing.
		before := c.snapshot(t)
		r := c.initHost(t, "--dry-run")
		if r.code != 0 || !strings.Contains(r.stdout, "clusterRole: host") || !strings.Contains(r.stderr, "[ok] cluster role: none") {
			t.Fatalf("client dry run: %s", r)
		}
		r = c.initHost(t, "--dry-run=server", "--proxy-publish-address", addr, "-o", "json")
		var dry map[string]any
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &dry) != nil || dry["dryRun"] != "server" || dry["changed"] != true {
			t.Fatalf("server dry run: %s", r)
		}
		time.Sleep(3 * time.Second) // give a wrongly persisted change time to show in the installer's output
		before.assertSame(t, "--dry-run", c.snapshot(t))
		if role := ihStr(c.cc(t).Object, "spec", "multicluster", "clusterRole"); role != "none" {
			t.Fatalf("dry run set clusterRole %q", role)
		}

		// Fresh cluster → host, with a pending LoadBalancer and --proxy-publish-address.
		r = c.initHost(t, "--proxy-publish-address", addr, "--timeout", "5m")
		if r.code != 0 {
			t.Fatalf("init-host: %s", r)
		}
		if !strings.Contains(r.stdout, "kubectl ks-mc join --context <member> --host-context pending") || !strings.Contains(r.stdout, addr) {
			t.Errorf("summary: %s", r.stdout)
		}
		// The stand-in's Tower listens where Tower does (it accepts the sandbox's real Tower agents)
		// once ks-installer created the tower Deployment: init-host's probe gets Tower's "OK" (an
		// [ok] verify check, which the text output does not print), or, when it ran before the
		// listener, a warning, never an error.
		if strings.Contains(r.stdout, "[error]") {
			t.Errorf("the reachability check is an error: %s", r)
		}
		if strings.Contains(r.stdout, "did not answer on "+addr) && !strings.Contains(r.stderr, "warning: the proxy did not answer on "+addr) {
			t.Errorf("an unreachable proxy without a warning on stderr: %s", r)
		}
		cc := c.cc(t)
		if ihStr(cc.Object, "spec", "multicluster", "clusterRole") != "host" || ihStr(cc.Object, "spec", "multicluster", "proxyPublishAddress") != addr ||
			ihStr(cc.Object, "status", "multicluster", "status") != "enabled" {
			t.Errorf("CC multicluster spec %v status %v", cc.Object["spec"].(map[string]any)["multicluster"], cc.Object["status"])
		}
		if got := ihSpecWithout(cc); got != unknownBefore {
			t.Errorf("other CC fields changed:\nbefore %s\nafter  %s", unknownBefore, got)
		}
		ks := c.ksConfig(t)
		if ihStr(ks, "multicluster", "clusterRole") != "host" || ihStr(ks, "multicluster", "enable") != "true" || ihStr(ks, "multicluster", "proxyPublishAddress") != addr {
			t.Errorf("kubesphere-config multicluster %v", ks["multicluster"])
		}
		svc, err := c.kube.CoreV1().Services(fakeks.Namespace).Get(context.Background(), "tower", metav1.GetOptions{})
		if err != nil || len(svc.Status.LoadBalancer.Ingress) != 0 {
			t.Errorf("tower Service should exist and be pending: %v %v", err, svc.Status.LoadBalancer)
		}
		firstRestart := c.restartedAt(t)
		if firstRestart == "" {
			t.Error("ks-apiserver not restarted")
		}

		// Re-run: no changes.
		before = c.snapshot(t)
		r = c.initHost(t)
		if r.code != 0 || !strings.Contains(r.stdout, "changes:       none") {
			t.Fatalf("re-run: %s", r)
		}
		before.assertSame(t, "re-run", c.snapshot(t))

		// A host whose tower is pending and publishes no address: without a terminal and without the
		// flag, init-host names the flag and changes nothing.
		c.patchCC(t, `{"spec":{"multicluster":{"proxyPublishAddress":null}}}`)
		c.waitConfig(t, "host", "")
		before = c.snapshot(t)
		r = c.initHost(t)
		if r.code == 0 || !strings.Contains(r.stderr, "pass --proxy-publish-address=http://HOST:PORT") || !strings.Contains(r.stderr, "NodePort") {
			t.Fatalf("non-TTY without the flag: %s", r)
		}
		before.assertSame(t, "non-TTY without the flag", c.snapshot(t))

		// Interrupted (here: --timeout while the installer is slow) and re-run: the re-run finishes
		// the job, including the ks-apiserver restart the first run never got to.
		c.setKnobs(t, map[string]string{fakeks.KnobInstallerDelay: "15s"})
		r = c.initHost(t, "--proxy-publish-address", addr, "--timeout", "4s")
		if r.code == 0 || !strings.Contains(r.stderr, "timed out") {
			t.Fatalf("slow installer did not time out: %s", r)
		}
		if c.restartedAt(t) != firstRestart {
			t.Fatal("ks-apiserver restarted before the installer finished")
		}
		c.setKnobs(t, map[string]string{fakeks.KnobInstallerDelay: "2s"})
		time.Sleep(time.Second) // a restart annotation has second precision
		r = c.initHost(t, "--proxy-publish-address", addr, "--timeout", "5m")
		if r.code != 0 {
			t.Fatalf("resumed run: %s", r)
		}
		if ihStr(c.cc(t).Object, "spec", "multicluster", "proxyPublishAddress") != addr {
			t.Error("address not published by the resumed run")
		}
		if got := c.restartedAt(t); got == firstRestart {
			t.Error("the resumed run did not restart ks-apiserver")
		}
		if got := ihSpecWithout(c.cc(t)); got != unknownBefore {
			t.Errorf("other CC fields changed:\nbefore %s\nafter  %s", unknownBefore, got)
		}
	})

	t.Run("load-balancer-and-ks-mc-tunnel", func(t *testing.T) {
		t.Parallel()
		c := ihOpen(t, s, "lb")
		c.setKnobs(t, map[string]string{fakeks.KnobLoadBalancer: "true"})
		addr := "http://" + c.NodeIP + ":8080"

		r := c.initHost(t, "-o", "json", "--timeout", "5m")
		if r.code != 0 {
			t.Fatalf("init-host: %s", r)
		}
		var res map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("-o json: %v\n%s", err, r.stdout)
		}
		if res["proxyPublishAddress"] != addr || res["addressSource"] != "loadBalancer" || res["clusterRole"] != "host" || res["changed"] != true {
			t.Errorf("result %v", res)
		}
		cc := c.cc(t)
		if ihStr(cc.Object, "spec", "multicluster", "clusterRole") != "host" || ihStr(cc.Object, "spec", "multicluster", "proxyPublishAddress") != "" {
			t.Errorf("CC multicluster %v (the load balancer address needs no override)", cc.Object["spec"].(map[string]any)["multicluster"])
		}
		if c.restartedAt(t) == "" {
			t.Error("ks-apiserver not restarted")
		}

		// The bundled proxy replaces Tower and serves /health on the published address. It serves
		// TLS there and refuses plaintext agents, so the load balancer's address is published as
		// https:// explicitly (KubeSphere itself would derive http://).
		r = c.initHost(t, "--tunnel=ks-mc", "--timeout", "5m")
		if r.code != 0 {
			t.Fatalf("--tunnel=ks-mc: %s", r)
		}
		httpsAddr := "https://" + c.NodeIP + ":8080"
		if got := ihStr(c.cc(t).Object, "spec", "multicluster", "proxyPublishAddress"); got != httpsAddr || !strings.Contains(r.stdout, httpsAddr) {
			t.Errorf("with --tunnel=ks-mc the published address is %q, want %s:\n%s", got, httpsAddr, r)
		}
		d, err := c.kube.AppsV1().Deployments(fakeks.Namespace).Get(context.Background(), "tower", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctr := d.Spec.Template.Spec.Containers
		if len(ctr) != 1 || len(ctr[0].Args) == 0 || ctr[0].Args[0] != "proxy" || len(ctr[0].Command) != 0 || !strings.HasPrefix(ctr[0].Image, s.ImageRepository+":") {
			t.Fatalf("tower does not run the ks-mc proxy: %+v", ctr)
		}
		if d.Spec.Template.Labels["app"] != "tower" || d.Spec.Template.Labels["app.kubernetes.io/name"] != "tower" || d.Spec.Template.Spec.ServiceAccountName != "kubesphere" {
			t.Errorf("labels %v sa %q", d.Spec.Template.Labels, d.Spec.Template.Spec.ServiceAccountName)
		}
		eventually(t, 60*time.Second, "GET "+addr+"/health", func() error {
			resp, err := http.Get(addr + "/health")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return fmt.Errorf("HTTP %d %s", resp.StatusCode, b)
			}
			return nil
		})

		// Re-run without --tunnel keeps the proxy and changes nothing.
		before := c.snapshot(t)
		r = c.initHost(t, "-o", "yaml")
		if r.code != 0 || !strings.Contains(r.stdout, "changed: false") || !strings.Contains(r.stdout, "tunnel: ks-mc") {
			t.Fatalf("re-run: %s", r)
		}
		before.assertSame(t, "re-run", c.snapshot(t))
		r = c.initHost(t, "--tunnel=ks-mc")
		if r.code != 0 || !strings.Contains(r.stdout, "changes:       none") {
			t.Fatalf("re-run with --tunnel=ks-mc: %s", r)
		}
		before.assertSame(t, "re-run with --tunnel=ks-mc", c.snapshot(t))
	})

	t.Run("member-refused-and-installer-failure", func(t *testing.T) {
		t.Parallel()
		c := ihOpen(t, s, "failing")
		addr := "http://" + c.NodeIP + ":8080"

		// A member is refused before anything changes.
		c.patchCC(t, `{"spec":{"multicluster":{"clusterRole":"member"}}}`)
		c.waitConfig(t, "member", "")
		before := c.snapshot(t)
		r := c.initHost(t, "--proxy-publish-address", addr)
		if r.code == 0 || !strings.Contains(r.stderr, "[error] cluster role is member") || !strings.Contains(r.stderr, "--force") {
			t.Fatalf("member: %s", r)
		}
		before.assertSame(t, "refused member", c.snapshot(t))

		// Installer failure: a clear error with what was seen and the logs command.
		c.patchCC(t, `{"spec":{"multicluster":{"clusterRole":"none"}}}`)
		c.waitConfig(t, "none", "")
		c.setKnobs(t, map[string]string{fakeks.KnobInstallerFail: "true"})
		r = c.initHost(t, "--proxy-publish-address", addr, "--timeout", "20s")
		if r.code == 0 {
			t.Fatalf("installer failure not reported: %s", r)
		}
		for _, want := range []string{"timed out after 20s waiting for ks-installer", "last observed: status.multicluster.status is unset",
			"kubectl logs -n kubesphere-system -l app=ks-installer --context failing"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("error lacks %q", want)
			}
		}
		if ihStr(c.cc(t).Object, "status", "multicluster", "status") == "enabled" {
			t.Error("status.multicluster enabled despite the failure")
		}
		if _, err := c.kube.AppsV1().Deployments(fakeks.Namespace).Get(context.Background(), "tower", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("tower exists after a failed run: %v", err)
		}
		if c.restartedAt(t) != "" {
			t.Error("ks-apiserver restarted after a failed installer run")
		}
	})
}
