package manifests

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// The ks-mc agent of a migrated member runs next to the Tower agent: another Deployment name and
// a selector disjoint from the Tower agent's pods.
func TestRenderMigratedAgentGolden(t *testing.T) {
	v := AgentValues{ClusterName: "member1", Token: testToken, ProxyServer: "https://172.16.0.10:30080",
		CACertHash: "sha256:" + "ab" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd", Image: "ghcr.io/ks-mc/ks-mc:v0.1.0",
		DeploymentName: kubesphere.MigratedAgentName}
	got := mustYAML(t, v, kubesphere.TunnelKsMc)
	golden(t, "agent-ksmc-migrated", got)
	objs, err := RenderAgent(kubesphere.TunnelKsMc, v)
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[1].Object, &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != kubesphere.MigratedAgentName {
		t.Errorf("name %s", d.Name)
	}
	tower := AgentSelector()
	for k, val := range d.Spec.Selector.MatchLabels {
		if tower[k] == val {
			continue
		}
		return // disjoint: at least one label differs
	}
	t.Errorf("selector %v matches the Tower agent's pods (%v)", d.Spec.Selector.MatchLabels, tower)
}

func TestRenderAgentDeploymentNameValidated(t *testing.T) {
	v := AgentValues{ClusterName: "m", Token: testToken, ProxyServer: "http://1.2.3.4:8080", DeploymentName: kubesphere.MigratedAgentName}
	if _, err := RenderAgent(kubesphere.TunnelTower, v); err == nil {
		t.Error("a Tower agent under the migrated name was rendered")
	}
	v.DeploymentName = "other"
	if _, err := RenderAgent(kubesphere.TunnelKsMc, v); err == nil {
		t.Error("an unknown Deployment name was rendered")
	}
}
