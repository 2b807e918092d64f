//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/version"
	"github.com/ks-mc/ks-mc/test/sandbox"
	"github.com/ks-mc/ks-mc/test/sandbox/fakeks"
)

// TestSmoke checks the sandbox's real control planes and KubeSphere stand-in, and runs the plugin
// through kubectl's plugin discovery.
func TestSmoke(t *testing.T) {
	s := sharedSandbox(t)
	for _, c := range s.Clusters {
		t.Run(c.Name, func(t *testing.T) {
			ctx := t.Context()
			cs, err := c.Client()
			if err != nil {
				t.Fatal(err)
			}
			v, err := cs.Discovery().ServerVersion()
			if err != nil || v.GitVersion != sandbox.KubernetesVersion {
				t.Fatalf("server version %v, %v; want %s", v, err, sandbox.KubernetesVersion)
			}
			cfg, _ := c.RESTConfig()
			dyn := dynamic.NewForConfigOrDie(cfg)
			cc, err := dyn.Resource(fakeks.CCGVR).Namespace(fakeks.Namespace).Get(ctx, fakeks.CCName, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("ClusterConfiguration: %v", err)
			}
			if r, _, _ := unstructured.NestedString(cc.Object, "spec", "multicluster", "clusterRole"); r != "none" {
				t.Errorf("fresh CC role = %q, want none", r)
			}
			if st, _, _ := unstructured.NestedString(cc.Object, "status", "core", "status"); st != "enabled" {
				t.Errorf("CC status.core.status = %q", st)
			}
			cm, err := cs.CoreV1().ConfigMaps(fakeks.Namespace).Get(ctx, fakeks.ConfigMapName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var ks map[string]any
			if err := yaml.Unmarshal([]byte(cm.Data[fakeks.ConfigKey]), &ks); err != nil {
				t.Fatal(err)
			}
			if jwt, _, _ := unstructured.NestedString(ks, "authentication", "jwtSecret"); len(jwt) != 32 {
				t.Errorf("kubesphere-config has no 32-character jwtSecret")
			}
			if svc, _, _ := unstructured.NestedString(ks, "multicluster", "proxyPublishService"); svc != "tower.kubesphere-system.svc" {
				t.Errorf("proxyPublishService = %q", svc)
			}
			for _, name := range []string{"ks-installer", "ks-apiserver", "ks-controller-manager", "ks-console"} {
				d, err := cs.AppsV1().Deployments(fakeks.Namespace).Get(ctx, name, metav1.GetOptions{})
				if err != nil || !sandbox.DeploymentAvailable(d) {
					t.Errorf("deployment %s not rolled out: %v", name, err)
				}
			}
		})
	}
	t.Run("rollout-restart", func(t *testing.T) {
		r := kubectl(t, s, "--context", "member1", "-n", "kubesphere-system", "rollout", "restart", "deployment/ks-apiserver")
		if r.code != 0 {
			t.Fatal(r)
		}
		r = kubectl(t, s, "--context", "member1", "-n", "kubesphere-system", "rollout", "status", "deployment/ks-apiserver", "--timeout=90s")
		if r.code != 0 || !strings.Contains(r.stdout, "successfully rolled out") {
			t.Fatal(r)
		}
	})
	t.Run("plugin-discovery", func(t *testing.T) {
		r := kubectl(t, s, "plugin", "list")
		if !strings.Contains(r.stdout, "kubectl-ks_mc") {
			t.Fatalf("kubectl plugin list does not show kubectl-ks_mc:\n%s", r)
		}
		r = ksmc(t, s, "version", "-o", "json")
		if r.code != 0 {
			t.Fatal(r)
		}
		var info version.Info
		if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
			t.Fatalf("version -o json is not JSON: %v\n%s", err, r.stdout)
		}
		if info.Version == "" || info.GoVersion == "" || info.Image == "" {
			t.Fatalf("incomplete version: %+v", info)
		}
	})
}

// A port already in use: a clear error naming the component and its log, and no stray process.
func TestSandboxPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = startSandbox(t.Context(), t.Name(), sandbox.Options{Clusters: []string{"solo"}, APIServerPorts: map[string]int{"solo": port}})
	assertComponentFailure(t, err, "solo/kube-apiserver", strconv.Itoa(port))
}

// A component that exits: the error names it and its log, and nothing is left running.
func TestSandboxComponentExits(t *testing.T) {
	_, err := startSandbox(t.Context(), t.Name(), sandbox.Options{Clusters: []string{"solo"},
		ExtraArgs: map[string][]string{"kube-controller-manager": {"--no-such-flag"}}})
	assertComponentFailure(t, err, "solo/kube-controller-manager", "no-such-flag")
}

func assertComponentFailure(t *testing.T, err error, component, inLog string) {
	t.Helper()
	var ce *sandbox.ComponentError
	if !errors.As(err, &ce) {
		t.Fatalf("want a ComponentError for %s, got %v", component, err)
	}
	if ce.Component != component || !strings.Contains(err.Error(), ce.LogPath) || !strings.Contains(ce.Tail, inLog) {
		t.Fatalf("error does not name %s, its log and the cause %q:\n%v", component, inLog, err)
	}
	t.Logf("reported as:\n%v", err)
	dir := filepath.Dir(filepath.Dir(ce.LogPath))
	if entries, _ := os.ReadDir(filepath.Join(dir, "pids")); len(entries) != 0 {
		t.Fatalf("PID files left behind: %v", entries)
	}
	// No process of this sandbox may survive: look for its directory on any command line.
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if strings.Contains(string(b), dir) {
			stat, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
			if strings.Contains(string(stat), ") Z ") {
				continue
			}
			t.Fatalf("stray process %s: %s", p.Name(), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}
