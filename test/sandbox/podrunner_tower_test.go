package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// A Deployment of KubeSphere's Tower image with /agent runs as the tower-agent binary with the
// container's command after /agent, KUBERNETES_SERVICE_HOST/PORT of the cluster's apiserver and a
// service-account directory holding a TokenRequest token and the cluster's CA (what Tower's agent
// reads in a pod); the host's tower Deployment (/proxy, or no command) does not.
func TestPodRunnerRunsTowerAgents(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := filepath.Join(dir, "tower-agent")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n{ echo \"ARGS $*\"; env; cat \"$TOWER_AGENT_SERVICE_ACCOUNT_DIR/token\"; echo; } > "+out+"\nsleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.100.9.1:6443", CertificateAuthorityData: []byte("CA-DATA")}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c"}
	kc.CurrentContext = "c"
	kcPath := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kcPath); err != nil {
		t.Fatal(err)
	}
	agent := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "cluster-agent", Namespace: "kubesphere-system"},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{ServiceAccountName: "kubesphere",
			Containers: []corev1.Container{{Name: "agent", Image: "kubesphere/tower:v0.2.1",
				Command: []string{"/agent", "--name=m1", "--token=s3cret", "--proxy-server=http://127.100.1.1:8080"}}}}}}}
	tower := agent.DeepCopy()
	tower.Name = "tower"
	tower.Spec.Template.Spec.Containers[0].Command = []string{"/proxy", "--ca-cert=/ca"}
	kube := fake.NewClientset(agent, tower)
	kube.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		return true, &authenticationv1.TokenRequest{Status: authenticationv1.TokenRequestStatus{Token: "sa-token-of-kubesphere"}}, nil
	})
	var log strings.Builder
	r := &PodRunner{Kube: kube, Cluster: &Cluster{Name: "m", NodeIP: "127.100.9.1", Server: "https://127.100.9.1:6443"},
		ImageRepository: "ghcr.io/ks-mc/ks-mc", TowerAgentBinary: script, Kubeconfig: kcPath,
		Dir: filepath.Join(dir, "pods"), LogDir: filepath.Join(dir, "logs"), PIDDir: filepath.Join(dir, "pids"), Log: &log}
	r.running = map[string]*podProc{}
	defer func() {
		for k, p := range r.running {
			r.stop(k, p)
		}
	}()
	if err := r.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(r.running) != 1 || r.running["kubesphere-system/cluster-agent/0"] == nil {
		t.Fatalf("running %v (log %s)", r.running, log.String())
	}
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(out)
		if got = string(b); strings.Contains(got, "sa-token-of-kubesphere") {
			break
		}
	}
	for _, want := range []string{"ARGS --name=m1 --token=s3cret --proxy-server=http://127.100.1.1:8080\n", "KUBERNETES_SERVICE_HOST=127.100.9.1\n",
		"KUBERNETES_SERVICE_PORT=6443\n", "sa-token-of-kubesphere"} {
		if !strings.Contains(got, want) {
			t.Errorf("the agent process lacks %q:\n%s", want, got)
		}
	}
	saDir := filepath.Join(dir, "pods", "kubesphere-system_cluster-agent_0", "serviceaccount")
	if ca, _ := os.ReadFile(filepath.Join(saDir, "ca.crt")); string(ca) != "CA-DATA" {
		t.Errorf("ca.crt %q", ca)
	}
	if strings.Contains(log.String(), "s3cret") {
		t.Error("the token reached the runner's log")
	}
}
