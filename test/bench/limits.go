package main

import (
	"fmt"
	"math"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// containerMem is what the rendered manifests give a container for its memory: its limit and the
// environment a kubelet would set from them (plain values, and the downward API's
// resourceFieldRef limits/requests.memory resolved as the kubelet does). The bench starts proxy and
// agent with that environment, so that they run as they do in their pods.
type containerMem struct {
	limit    int64  // bytes
	limitStr string // as rendered, e.g. 200M
	env      []string
}

// renderedMem renders the bundled agent's Deployment and the proxy's Deployment (pkg/manifests)
// and returns what they give the agent and proxy containers.
func renderedMem() (agent, proxy containerMem, err error) {
	objs, err := manifests.RenderAgent(kubesphere.TunnelKsMc, manifests.AgentValues{ClusterName: "bench", Token: "bench-token",
		ProxyServer: "https://proxy.example:8080", CACertHash: "sha256:" + strings.Repeat("ab", 32)})
	if err != nil {
		return agent, proxy, fmt.Errorf("render the agent: %w", err)
	}
	var ad *appsv1.Deployment
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			ad = &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, ad); err != nil {
				return agent, proxy, fmt.Errorf("decode the agent Deployment: %w", err)
			}
		}
	}
	if ad == nil {
		return agent, proxy, fmt.Errorf("the agent rendering has no Deployment")
	}
	if agent, err = memOfContainer(ad, "agent"); err != nil {
		return agent, proxy, err
	}
	pd, err := manifests.ProxyDeployment(manifests.DefaultProxyValues())
	if err != nil {
		return agent, proxy, fmt.Errorf("render the proxy: %w", err)
	}
	proxy, err = memOfContainer(pd, manifests.ProxyContainerName)
	return agent, proxy, err
}

func memOfContainer(d *appsv1.Deployment, name string) (containerMem, error) {
	var m containerMem
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name != name {
			continue
		}
		q, ok := c.Resources.Limits[corev1.ResourceMemory]
		if !ok {
			return m, fmt.Errorf("container %s of %s has no memory limit", name, d.Name)
		}
		m.limit, m.limitStr = q.Value(), q.String()
		env, err := containerEnv(c)
		m.env = env
		return m, err
	}
	return m, fmt.Errorf("deployment %s has no container %s", d.Name, name)
}

// containerEnv is the environment the kubelet would give c, for the variables that do not depend on
// the pod's placement (plain values and resourceFieldRef on memory); fieldRef variables (POD_IP,
// POD_NAMESPACE, ...) are left out: the bench passes the addresses as flags.
func containerEnv(c corev1.Container) ([]string, error) {
	var env []string
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.ResourceFieldRef != nil:
			r := e.ValueFrom.ResourceFieldRef
			var q resource.Quantity
			var ok bool
			switch r.Resource {
			case "limits.memory":
				q, ok = c.Resources.Limits[corev1.ResourceMemory]
			case "requests.memory":
				q, ok = c.Resources.Requests[corev1.ResourceMemory]
			default:
				return nil, fmt.Errorf("env %s: resourceFieldRef %s is not handled by the bench", e.Name, r.Resource)
			}
			if !ok {
				return nil, fmt.Errorf("env %s: container %s has no %s (the kubelet would give the node's allocatable)", e.Name, c.Name, r.Resource)
			}
			div := r.Divisor.Value()
			if div <= 0 {
				div = 1
			}
			// As the kubelet does (pkg/api/v1/resource: convertResourceMemoryToString): ceiling.
			env = append(env, fmt.Sprintf("%s=%d", e.Name, int64(math.Ceil(float64(q.Value())/float64(div)))))
		}
	}
	sort.Strings(env)
	return env, nil
}

// envNames lists the variables' names (without values), for the report.
func envNames(envs ...[]string) string {
	seen := map[string]bool{}
	var names []string
	for _, env := range envs {
		for _, kv := range env {
			k, _, _ := strings.Cut(kv, "=")
			if !seen[k] {
				seen[k] = true
				names = append(names, k)
			}
		}
	}
	if len(names) == 0 {
		return "none"
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
