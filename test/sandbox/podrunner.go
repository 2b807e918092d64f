package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// PodRunner runs Deployments that use the ks-mc image as local processes of the ks-mc binary, and
// the agent container of Deployments of KubeSphere's Tower image (kubesphere/tower, command
// /agent) as processes of test/toweragent's tower-agent: the sandbox's stand-in for a kubelet and
// a container runtime, for these two images only.
type PodRunner struct {
	Kube            kubernetes.Interface
	Cluster         *Cluster
	Binary          string
	ImageRepository string
	// TowerAgentBinary runs Tower agent containers ("" leaves them without a process).
	TowerAgentBinary string
	Kubeconfig       string // the cluster's kubeconfig, handed to pods as KUBECONFIG
	Dir              string // per-pod working directories (volumes)
	LogDir, PIDDir   string
	Log              io.Writer

	running map[string]*podProc
}

type podProc struct {
	hash     string
	proc     *Proc
	restarts int
	nextTry  time.Time
}

// Run reconciles every second until ctx ends, then stops its processes.
func (r *PodRunner) Run(ctx context.Context) {
	r.running = map[string]*podProc{}
	defer func() {
		for key, p := range r.running {
			r.stop(key, p)
		}
	}()
	for {
		if err := r.reconcile(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(r.Log, "%v\n", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// ImageRepositoryOf strips the tag and digest of an image reference.
func ImageRepositoryOf(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// TowerImageRepository is KubeSphere's Tower image (the agent Deployment KubeSphere renders runs
// its /agent, kubesphere/kubesphere v3.4.1 pkg/kapis/cluster/v1alpha1 agent template).
const TowerImageRepository = "kubesphere/tower"

// ourContainer returns the first container of the template that uses the ks-mc image, else (with
// a TowerAgentBinary) the first Tower agent container.
func (r *PodRunner) ourContainer(spec *corev1.PodSpec) *corev1.Container {
	for i := range spec.Containers {
		if ImageRepositoryOf(spec.Containers[i].Image) == r.ImageRepository {
			return &spec.Containers[i]
		}
	}
	for i := range spec.Containers {
		if r.isTowerAgent(&spec.Containers[i]) {
			return &spec.Containers[i]
		}
	}
	return nil
}

// isTowerAgent: a container of the Tower image whose command is /agent (the host's tower
// Deployment runs /proxy of the same image: the stand-in fakeks.Tower plays that one).
func (r *PodRunner) isTowerAgent(c *corev1.Container) bool {
	return r.TowerAgentBinary != "" && ImageRepositoryOf(c.Image) == TowerImageRepository &&
		len(c.Command) > 0 && path.Base(c.Command[0]) == "agent"
}

func (r *PodRunner) reconcile(ctx context.Context) error {
	list, err := r.Kube.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list deployments: %w", err)
	}
	want := map[string]*appsv1.Deployment{}
	for i := range list.Items {
		d := &list.Items[i]
		if d.DeletionTimestamp != nil || r.ourContainer(&d.Spec.Template.Spec) == nil {
			continue
		}
		n := 1
		if d.Spec.Replicas != nil {
			n = int(*d.Spec.Replicas)
		}
		for i := 0; i < n; i++ {
			want[fmt.Sprintf("%s/%s/%d", d.Namespace, d.Name, i)] = d
		}
	}
	for key, p := range r.running {
		d, ok := want[key]
		if !ok || templateHash(d) != p.hash {
			r.stop(key, p)
			delete(r.running, key)
		}
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		d := want[key]
		p := r.running[key]
		if p != nil {
			select {
			case <-p.proc.Exited():
				if time.Now().Before(p.nextTry) {
					continue
				}
				fmt.Fprintf(r.Log, "pod %s exited (%v); restarting (restart %d)\n", key, p.proc.failure().(*ComponentError).Err, p.restarts+1)
			default:
				continue
			}
		}
		np, err := r.start(ctx, key, d)
		if err != nil {
			fmt.Fprintf(r.Log, "pod %s: %v\n", key, err)
			continue
		}
		if p != nil {
			np.restarts = p.restarts + 1
		}
		backoff := time.Duration(1<<min(np.restarts, 4)) * time.Second
		np.nextTry = time.Now().Add(backoff)
		r.running[key] = np
	}
	return nil
}

func templateHash(d *appsv1.Deployment) string {
	b, _ := json.Marshal(d.Spec.Template)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func (r *PodRunner) stop(key string, p *podProc) {
	fmt.Fprintf(r.Log, "pod %s: stopping\n", key)
	stopPID(p.proc.PID, p.proc.Binary, 10*time.Second)
	_ = os.Remove(filepath.Join(r.PIDDir, pidFileName(p.proc.Name)))
}

// start resolves the container's command, env and volumes and starts the process.
func (r *PodRunner) start(ctx context.Context, key string, d *appsv1.Deployment) (*podProc, error) {
	spec := d.Spec.Template.Spec
	c := r.ourContainer(&spec)
	if r.Binary == "" && !r.isTowerAgent(c) {
		return nil, fmt.Errorf("no ks-mc binary configured (set KSMC_BINARY) to run image %s", r.ImageRepository)
	}
	parts := strings.Split(key, "/")
	podName := fmt.Sprintf("%s-%s-%s", d.Name, templateHash(d)[:6], parts[2])
	podDir := filepath.Join(r.Dir, d.Namespace+"_"+d.Name+"_"+parts[2])
	_ = os.RemoveAll(podDir)
	if err := os.MkdirAll(podDir, 0o700); err != nil { // the process's working directory
		return nil, fmt.Errorf("create pod directory: %w", err)
	}
	mounts, err := r.writeVolumes(ctx, d.Namespace, spec, c, podDir)
	if err != nil {
		return nil, err
	}
	env, err := r.resolveEnv(ctx, d.Namespace, podName, spec, c)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	for _, e := range env {
		vars[e.Name] = rewritePaths(e.Value, mounts)
	}
	var argv []string
	binary := r.Binary
	tower := r.isTowerAgent(c)
	if len(c.Command) > 0 {
		if path.Base(c.Command[0]) != "kubectl-ks_mc" && !tower {
			return nil, fmt.Errorf("container %s: command %q is not the ks-mc entrypoint", c.Name, c.Command[0])
		}
		argv = append(argv, c.Command[1:]...)
	}
	argv = append(argv, c.Args...)
	for i, a := range argv {
		argv[i] = rewritePaths(expandVars(a, vars), mounts)
	}
	envList := []string{"KUBECONFIG=" + r.Kubeconfig}
	if tower {
		binary = r.TowerAgentBinary
		sa, err := r.towerServiceAccount(ctx, d.Namespace, spec.ServiceAccountName, podDir)
		if err != nil {
			return nil, err
		}
		envList = append(envList, sa...)
	}
	for _, e := range env {
		envList = append(envList, e.Name+"="+vars[e.Name])
	}
	p, err := startProc(procOptions{
		Name: r.Cluster.Name + "/pod/" + strings.ReplaceAll(key, "/", "_"), Binary: binary, Args: argv, Env: envList,
		Dir: podDir, LogPath: filepath.Join(r.LogDir, "pod-"+r.Cluster.Name+"-"+d.Namespace+"-"+d.Name+"-"+parts[2]+".log"),
		PIDDir: r.PIDDir, Netns: r.Cluster.Netns, Detach: true,
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(r.Log, "pod %s: started pid %d: %s %s\n", key, p.PID, filepath.Base(binary), redactArgs(argv))
	return &podProc{hash: templateHash(d), proc: p}, nil
}

// redactArgs hides values of flags that look secret in the runner's own log line.
func redactArgs(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = a
		if k, _, ok := strings.Cut(a, "="); ok && strings.Contains(strings.ToLower(k), "token") && !strings.Contains(strings.ToLower(k), "file") {
			out[i] = k + "=<redacted>"
		}
	}
	return strings.Join(out, " ")
}

func (r *PodRunner) resolveEnv(ctx context.Context, ns, podName string, spec corev1.PodSpec, c *corev1.Container) ([]corev1.EnvVar, error) {
	var out []corev1.EnvVar
	vars := map[string]string{}
	add := func(name, value string) {
		vars[name] = value
		out = append(out, corev1.EnvVar{Name: name, Value: value})
	}
	for _, ef := range c.EnvFrom {
		data := map[string]string{}
		switch {
		case ef.SecretRef != nil:
			s, err := r.Kube.CoreV1().Secrets(ns).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %s: %w", ef.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		case ef.ConfigMapRef != nil:
			cm, err := r.Kube.CoreV1().ConfigMaps(ns).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configmap %s: %w", ef.ConfigMapRef.Name, err)
			}
			data = cm.Data
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			add(ef.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			add(e.Name, expandVars(e.Value, vars))
			continue
		}
		vf := e.ValueFrom
		switch {
		case vf.SecretKeyRef != nil:
			s, err := r.Kube.CoreV1().Secrets(ns).Get(ctx, vf.SecretKeyRef.Name, metav1.GetOptions{})
			if err != nil {
				if vf.SecretKeyRef.Optional != nil && *vf.SecretKeyRef.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s: %w", e.Name, vf.SecretKeyRef.Name, err)
			}
			v, ok := s.Data[vf.SecretKeyRef.Key]
			if !ok {
				return nil, fmt.Errorf("env %s: secret %s has no key %s", e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			}
			add(e.Name, string(v))
		case vf.ConfigMapKeyRef != nil:
			cm, err := r.Kube.CoreV1().ConfigMaps(ns).Get(ctx, vf.ConfigMapKeyRef.Name, metav1.GetOptions{})
			if err != nil {
				if vf.ConfigMapKeyRef.Optional != nil && *vf.ConfigMapKeyRef.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: configmap %s: %w", e.Name, vf.ConfigMapKeyRef.Name, err)
			}
			add(e.Name, cm.Data[vf.ConfigMapKeyRef.Key])
		case vf.FieldRef != nil:
			switch vf.FieldRef.FieldPath {
			case "status.podIP", "status.hostIP":
				add(e.Name, r.Cluster.NodeIP)
			case "metadata.name":
				add(e.Name, podName)
			case "metadata.namespace":
				add(e.Name, ns)
			case "spec.nodeName":
				add(e.Name, nodeName(r.Cluster))
			case "spec.serviceAccountName":
				add(e.Name, spec.ServiceAccountName)
			default:
				return nil, fmt.Errorf("env %s: fieldRef %s is not supported by the sandbox", e.Name, vf.FieldRef.FieldPath)
			}
		case vf.ResourceFieldRef != nil:
			v, err := resourceFieldValue(c, vf.ResourceFieldRef)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			add(e.Name, v)
		}
	}
	return out, nil
}

// mount maps a container path to the local directory standing in for it.
type mount struct{ path, local string }

func (r *PodRunner) writeVolumes(ctx context.Context, ns string, spec corev1.PodSpec, c *corev1.Container, podDir string) ([]mount, error) {
	var mounts []mount
	for _, vm := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == vm.Name {
				vol = &spec.Volumes[i]
			}
		}
		if vol == nil {
			return nil, fmt.Errorf("volumeMount %s: no such volume", vm.Name)
		}
		local := filepath.Join(podDir, "volumes", vm.Name)
		if err := os.MkdirAll(local, 0o700); err != nil {
			return nil, err
		}
		files := map[string][]byte{}
		switch {
		case vol.Secret != nil:
			s, err := r.Kube.CoreV1().Secrets(ns).Get(ctx, vol.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				if vol.Secret.Optional != nil && *vol.Secret.Optional {
					break
				}
				return nil, fmt.Errorf("volume %s: secret %s: %w", vm.Name, vol.Secret.SecretName, err)
			}
			files = pick(s.Data, vol.Secret.Items)
		case vol.ConfigMap != nil:
			cm, err := r.Kube.CoreV1().ConfigMaps(ns).Get(ctx, vol.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				if vol.ConfigMap.Optional != nil && *vol.ConfigMap.Optional {
					break
				}
				return nil, fmt.Errorf("volume %s: configmap %s: %w", vm.Name, vol.ConfigMap.Name, err)
			}
			data := map[string][]byte{}
			for k, v := range cm.Data {
				data[k] = []byte(v)
			}
			files = pick(data, vol.ConfigMap.Items)
		case vol.EmptyDir != nil:
		default:
			// Projected service-account tokens and other kinds: the process uses KUBECONFIG instead.
			continue
		}
		for name, data := range files {
			p := filepath.Join(local, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return nil, err
			}
			if err := os.WriteFile(p, data, 0o600); err != nil {
				return nil, err
			}
		}
		target := local
		if vm.SubPath != "" {
			target = filepath.Join(local, vm.SubPath)
		}
		mounts = append(mounts, mount{path: strings.TrimSuffix(vm.MountPath, "/"), local: target})
	}
	// Longest mount path first, so nested mounts win.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].path) > len(mounts[j].path) })
	return mounts, nil
}

func pick(data map[string][]byte, items []corev1.KeyToPath) map[string][]byte {
	out := map[string][]byte{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = v
		}
		return out
	}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			out[it.Path] = v
		}
	}
	return out
}

// rewritePaths replaces a container path inside s (a flag value or an env value) by its local copy.
func rewritePaths(s string, mounts []mount) string {
	for _, m := range mounts {
		for _, sep := range []string{"=", ""} {
			prefix := ""
			rest := s
			if sep != "" {
				k, v, ok := strings.Cut(s, sep)
				if !ok {
					continue
				}
				prefix, rest = k+sep, v
			}
			if rest == m.path || strings.HasPrefix(rest, m.path+"/") {
				return prefix + m.local + strings.TrimPrefix(rest, m.path)
			}
		}
	}
	return s
}

// expandVars expands $(VAR) references like the kubelet: unknown references stay as written and
// $$(VAR) escapes.
func expandVars(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) {
			if s[i+1] == '$' {
				b.WriteByte('$')
				i++
				continue
			}
			if s[i+1] == '(' {
				if end := strings.IndexByte(s[i+2:], ')'); end >= 0 {
					name := s[i+2 : i+2+end]
					if v, ok := vars[name]; ok {
						b.WriteString(v)
						i += 2 + end
						continue
					}
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// towerServiceAccount gives a Tower agent process what Tower's agent reads in a pod (kubesphere/tower
// v0.2.1 pkg/agent/agent.go NewAgent, in-cluster branch): KUBERNETES_SERVICE_HOST/PORT (here the
// cluster's apiserver, as kube-proxy would route the kubernetes Service) and the service account's
// token and ca.crt, written to a directory that tower-agent reads instead of
// /var/run/secrets/kubernetes.io/serviceaccount ($TOWER_AGENT_SERVICE_ACCOUNT_DIR, a test hook of
// test/toweragent; the flags stay Tower's). The token is a real one of the pod's service account
// (TokenRequest), as the kubelet projects it.
func (r *PodRunner) towerServiceAccount(ctx context.Context, ns, sa, podDir string) ([]string, error) {
	if sa == "" {
		sa = "default"
	}
	tr, err := r.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(24 * 3600))}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token of service account %s/%s: %w", ns, sa, err)
	}
	u, err := url.Parse(r.Cluster.Server)
	if err != nil {
		return nil, fmt.Errorf("cluster %s server %q: %w", r.Cluster.Name, r.Cluster.Server, err)
	}
	ca, err := r.clusterCA()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(podDir, "serviceaccount")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": ca, "namespace": []byte(ns)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return []string{"KUBERNETES_SERVICE_HOST=" + u.Hostname(), "KUBERNETES_SERVICE_PORT=" + u.Port(), "TOWER_AGENT_SERVICE_ACCOUNT_DIR=" + dir}, nil
}

// clusterCA is the CA of the cluster's apiserver, from its kubeconfig.
func (r *PodRunner) clusterCA() ([]byte, error) {
	cfg, err := clientcmd.LoadFromFile(r.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", r.Kubeconfig, err)
	}
	for _, c := range cfg.Clusters {
		if len(c.CertificateAuthorityData) > 0 {
			return c.CertificateAuthorityData, nil
		}
	}
	return nil, fmt.Errorf("%s has no certificate-authority-data", r.Kubeconfig)
}

func ptr[T any](v T) *T { return &v }

// resourceFieldValue resolves a downward-API resourceFieldRef as the kubelet does
// (kubernetes pkg/api/v1/resource/helpers.go, ExtractContainerResourceValue: the value divided by
// the divisor, rounded up; memory in bytes, cpu in cores unless the divisor says otherwise). A limit
// the container does not set is the node's allocatable (pkg/kubelet/kubelet_pods.go merges it in
// first): here the machine's memory and cores, the sandbox's node.
func resourceFieldValue(c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	var q resource.Quantity
	var ok bool
	var name corev1.ResourceName
	switch ref.Resource {
	case "limits.memory", "requests.memory":
		name = corev1.ResourceMemory
	case "limits.cpu", "requests.cpu":
		name = corev1.ResourceCPU
	default:
		return "", fmt.Errorf("resourceFieldRef %s is not supported by the sandbox", ref.Resource)
	}
	if strings.HasPrefix(ref.Resource, "limits.") {
		q, ok = c.Resources.Limits[name]
		if !ok {
			q = nodeAllocatable(name)
		}
	} else {
		q = c.Resources.Requests[name]
	}
	div := ref.Divisor
	if name == corev1.ResourceCPU {
		d := div.MilliValue()
		if d <= 0 {
			d = 1000
		}
		return strconv.FormatInt(int64(math.Ceil(float64(q.MilliValue())/float64(d))), 10), nil
	}
	d := div.Value()
	if d <= 0 {
		d = 1
	}
	return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(d))), 10), nil
}

// nodeAllocatable is what the sandbox's node offers: the machine's memory and cores.
func nodeAllocatable(name corev1.ResourceName) resource.Quantity {
	if name == corev1.ResourceCPU {
		return *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI)
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					return *resource.NewQuantity(kb*1024, resource.BinarySI)
				}
			}
		}
	}
	return *resource.NewQuantity(8<<30, resource.BinarySI)
}
