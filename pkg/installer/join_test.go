package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/manifests"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// hostJWT is the host's jwtSecret in these tests: it must never appear in any output.
const hostJWT = "H0stJwtS3cretValue0123456789abcd"

const hostKSConfig = `authentication:
  jwtSecret: "` + hostJWT + `"
  maximumClockSkew: 10s
multicluster:
  clusterRole: host
  enable: true
  agentImage: kubesphere/tower:v0.2.1
  proxyPublishAddress: http://203.0.113.10:30881
`

func hostCCYAML() string {
	s := strings.Replace(testCCYAML, "clusterRole: none", "clusterRole: host", 1)
	return strings.Replace(s, "status:\n  core:", "status:\n  multicluster:\n    status: enabled\n  core:", 1)
}

type joinFixture struct {
	host, member *fakeCluster
	clock        map[*Clients]time.Duration
}

func withUID(fc *fakeCluster, uid string) {
	_, _ = fc.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: types.UID(uid)}}, metav1.CreateOptions{})
}

// withClusters replaces the dynamic client by one that also serves Clusters.
func withClusters(t *testing.T, fc *fakeCluster, ccDoc string, clusters ...*unstructured.Unstructured) {
	objs := []runtime.Object{loadCC(t, ccDoc)}
	for _, c := range clusters {
		objs = append(objs, c)
	}
	fc.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList", kubesphere.ClusterGVR: "ClusterList"}, objs...)
	fc.c.Dynamic = fc.dyn
	// The plain object tracker of the dynamic fake cannot create objects by server-side apply:
	// emulate it for Clusters (create, or merge the applied fields into the existing object).
	fc.dyn.PrependReactor("patch", "clusters", func(a k8stesting.Action) (bool, runtime.Object, error) {
		pa := a.(k8stesting.PatchAction)
		if pa.GetPatchType() != types.ApplyPatchType {
			return false, nil, nil
		}
		applied := &unstructured.Unstructured{}
		if err := applied.UnmarshalJSON(pa.GetPatch()); err != nil {
			return true, nil, err
		}
		tr := fc.dyn.Tracker()
		cur, err := tr.Get(kubesphere.ClusterGVR, "", pa.GetName())
		if err != nil {
			return true, applied, tr.Create(kubesphere.ClusterGVR, applied, "")
		}
		merged := cur.(*unstructured.Unstructured).DeepCopy()
		mergeInto(merged.Object, applied.Object)
		return true, merged, tr.Update(kubesphere.ClusterGVR, merged, "")
	})
}

func mergeInto(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				mergeInto(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

func newJoinFixture(t *testing.T, clusters ...*unstructured.Unstructured) *joinFixture {
	host := newFakeCluster(t, hostCCYAML(), towerDeployment(), towerService(""))
	cm, _ := host.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Get(context.Background(), kubesphere.ConfigName, metav1.GetOptions{})
	cm.Data[kubesphere.ConfigKey] = hostKSConfig
	_, _ = host.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Update(context.Background(), cm, metav1.UpdateOptions{})
	withUID(host, "uid-host")
	withClusters(t, host, hostCCYAML(), clusters...)
	host.c.Context = "host"
	member := newFakeCluster(t, testCCYAML)
	withUID(member, "uid-member")
	withClusters(t, member, testCCYAML)
	member.c.Context = "member1"
	host.clearActions()
	member.clearActions()
	return &joinFixture{host: host, member: member, clock: map[*Clients]time.Duration{}}
}

func (f *joinFixture) join(opts JoinOptions, rep Reporter) *Join {
	if opts.Name == "" {
		opts.Name = "member1"
	}
	opts.Clock = func(_ context.Context, c *Clients) (time.Duration, time.Duration, error) {
		return f.clock[c], 10 * time.Millisecond, nil
	}
	opts.PollInterval = 10 * time.Millisecond
	return NewJoin(f.host.c, f.member.c, opts, rep)
}

func memberCluster(name, uid string, annotated bool) *unstructured.Unstructured {
	c, _ := manifests.RenderCluster(manifests.ClusterValues{Name: name})
	if annotated {
		c.SetAnnotations(map[string]string{kubesphere.MemberUIDAnnotation: uid})
	} else if uid != "" {
		_ = unstructured.SetNestedField(c.Object, uid, "status", "uid")
	}
	return c
}

func errorsOf(p *Preflight) string {
	var b strings.Builder
	for _, c := range p.Errors() {
		b.WriteString(c.String() + "\n")
	}
	return b.String()
}

func TestJoinPreflightOK(t *testing.T) {
	f := newJoinFixture(t)
	p, st := split(f.join(JoinOptions{}, nil).Preflight(context.Background()))
	if p.HasErrors() || st == nil {
		t.Fatalf("unexpected errors:\n%s", errorsOf(p))
	}
	if st.proxyAddress != "http://203.0.113.10:30881" || st.tunnel != kubesphere.TunnelTower || st.agentImage != "kubesphere/tower:v0.2.1" {
		t.Errorf("state = %+v", st)
	}
	if st.existing != nil || st.memberUID != "uid-member" {
		t.Errorf("existing %v uid %s", st.existing, st.memberUID)
	}
	if len(f.host.mutations())+len(f.member.mutations()) > 0 {
		t.Errorf("preflight changed something: %v %v", f.host.mutations(), f.member.mutations())
	}
}

func TestJoinPreflightReportsBothSidesTogether(t *testing.T) {
	f := newJoinFixture(t)
	// Host: not a host. Member: is a host.
	withClusters(t, f.host, testCCYAML)
	withClusters(t, f.member, hostCCYAML())
	p, st := split(f.join(JoinOptions{}, nil).Preflight(context.Background()))
	if st != nil {
		t.Fatal("state returned despite errors")
	}
	errs := errorsOf(p)
	for _, want := range []string{"host (host): multicluster.clusterRole is \"none\", not host", "kubectl ks-mc init-host --context host", "member (member1): it is a KubeSphere host"} {
		if !strings.Contains(errs, want) {
			t.Errorf("errors lack %q:\n%s", want, errs)
		}
	}
}

func TestJoinPreflightHostChecks(t *testing.T) {
	cases := map[string]struct {
		mutate func(*joinFixture)
		want   string
	}{
		"multicluster status not enabled": {func(f *joinFixture) {
			withClusters(t, f.host, strings.Replace(hostCCYAML(), "    status: enabled\n  core:", "    status: pending\n  core:", 1))
		}, "status.multicluster.status is \"pending\""},
		"multicluster.enable false": {func(f *joinFixture) {
			setConfig(f.host, strings.Replace(hostKSConfig, "enable: true", "enable: false", 1))
		}, "multicluster.enable false"},
		"no proxy address": {func(f *joinFixture) {
			setConfig(f.host, strings.Replace(hostKSConfig, "  proxyPublishAddress: http://203.0.113.10:30881\n", "", 1))
		}, "no proxy address"},
		"no KubeSphere on the member": {func(f *joinFixture) {
			f.member.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
				kubesphere.ClusterConfigurationGVR: "ClusterConfigurationList", kubesphere.ClusterGVR: "ClusterList"})
			f.member.c.Dynamic = f.member.dyn
		}, "member (member1): KubeSphere is not installed"},
		"same cluster": {func(f *joinFixture) {
			_ = f.member.kube.CoreV1().Namespaces().Delete(context.Background(), "kube-system", metav1.DeleteOptions{})
			withUID(f.member, "uid-host")
		}, "are the same cluster"},
		"tunnel mismatch": {func(*joinFixture) {}, "--tunnel=ks-mc was asked for"},
		"permission denied": {func(f *joinFixture) {
			f.member.denied["patch clusterconfigurations"] = true
		}, "permissions: not allowed to patch clusterconfigurations"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			f := newJoinFixture(t)
			tc.mutate(f)
			opts := JoinOptions{}
			if name == "tunnel mismatch" {
				opts.Tunnel = kubesphere.TunnelKsMc
			}
			p, _ := split(f.join(opts, nil).Preflight(context.Background()))
			if errs := errorsOf(p); !strings.Contains(errs, tc.want) {
				t.Errorf("errors lack %q:\n%s", tc.want, errs)
			}
		})
	}
}

func setConfig(fc *fakeCluster, doc string) {
	cm, _ := fc.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Get(context.Background(), kubesphere.ConfigName, metav1.GetOptions{})
	cm.Data[kubesphere.ConfigKey] = doc
	_, _ = fc.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Update(context.Background(), cm, metav1.UpdateOptions{})
}

func TestJoinPreflightClockSkew(t *testing.T) {
	for _, tc := range []struct {
		skew time.Duration
		err  bool
	}{{3 * time.Second, false}, {-9 * time.Second, false}, {30 * time.Second, true}, {-12 * time.Second, true}} {
		f := newJoinFixture(t)
		f.clock[f.host.c] = tc.skew
		p, _ := split(f.join(JoinOptions{}, nil).Preflight(context.Background()))
		got := strings.Contains(errorsOf(p), "clock skew")
		if got != tc.err {
			t.Errorf("skew %s: error %v, want %v\n%s", tc.skew, got, tc.err, errorsOf(p))
		}
	}
	// A longer maximumClockSkew on the host is honoured.
	f := newJoinFixture(t)
	setConfig(f.host, strings.Replace(hostKSConfig, "maximumClockSkew: 10s", "maximumClockSkew: 1m", 1))
	f.clock[f.member.c] = 30 * time.Second
	if p, _ := split(f.join(JoinOptions{}, nil).Preflight(context.Background())); p.HasErrors() {
		t.Errorf("30s skew with a 1m maximum refused:\n%s", errorsOf(p))
	}
	// Unmeasurable clocks warn.
	f = newJoinFixture(t)
	j := f.join(JoinOptions{}, nil)
	j.opts.Clock = func(context.Context, *Clients) (time.Duration, time.Duration, error) {
		return 0, 0, errors.New("no Date")
	}
	p, _ := split(j.Preflight(context.Background()))
	if p.HasErrors() || !strings.Contains(fmt.Sprint(p.Checks), "could not measure") {
		t.Errorf("checks = %v", p.Checks)
	}
}

func TestJoinPreflightIdentity(t *testing.T) {
	cases := map[string]struct {
		clusters []*unstructured.Unstructured
		want     string // an error, or "" for OK
		adopt    bool
	}{
		"joined under another name":          {[]*unstructured.Unstructured{memberCluster("other", "uid-member", false)}, `is already Cluster "other"`, false},
		"joined under another name, pending": {[]*unstructured.Unstructured{memberCluster("other", "uid-member", true)}, `is already Cluster "other"`, false},
		"name taken by another member":       {[]*unstructured.Unstructured{memberCluster("member1", "uid-else", false)}, "belongs to another cluster", false},
		"name taken, not linked":             {[]*unstructured.Unstructured{memberCluster("member1", "", false)}, "not linked to any member", false},
		"re-run: same UID is adopted":        {[]*unstructured.Unstructured{memberCluster("member1", "uid-member", false)}, "", true},
		"re-run before Ready: annotation":    {[]*unstructured.Unstructured{memberCluster("member1", "uid-member", true)}, "", true},
		"other members do not matter":        {[]*unstructured.Unstructured{memberCluster("m2", "uid-2", false), memberCluster("m3", "", false)}, "", false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			f := newJoinFixture(t, tc.clusters...)
			p, st := split(f.join(JoinOptions{}, nil).Preflight(context.Background()))
			errs := errorsOf(p)
			if tc.want == "" {
				if errs != "" || st == nil {
					t.Fatalf("unexpected errors:\n%s", errs)
				}
				if (st.existing != nil) != tc.adopt {
					t.Errorf("adopt = %v, want %v", st.existing != nil, tc.adopt)
				}
				return
			}
			if !strings.Contains(errs, tc.want) {
				t.Errorf("errors lack %q:\n%s", tc.want, errs)
			}
		})
	}
}

func agentDeployment(t *testing.T, proxy, name string) *appsv1.Deployment {
	objs, err := manifests.RenderAgent(kubesphere.TunnelTower, manifests.AgentValues{ClusterName: name, Token: "tok", ProxyServer: proxy})
	if err != nil {
		t.Fatal(err)
	}
	d := &appsv1.Deployment{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[0].Object, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestJoinPreflightLeftoverAgent(t *testing.T) {
	f := newJoinFixture(t)
	_, _ = f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Create(context.Background(), agentDeployment(t, "http://198.51.100.7:8080", "x"), metav1.CreateOptions{})
	p, _ := split(f.join(JoinOptions{}, nil).Preflight(context.Background()))
	if !strings.Contains(errorsOf(p), "connects to another proxy (http://198.51.100.7:8080)") {
		t.Errorf("errors:\n%s", errorsOf(p))
	}
	f = newJoinFixture(t)
	_, _ = f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Create(context.Background(), agentDeployment(t, "http://203.0.113.10:30881", "old"), metav1.CreateOptions{})
	p, st := split(f.join(JoinOptions{}, nil).Preflight(context.Background()))
	if p.HasErrors() || st == nil || !strings.Contains(fmt.Sprint(p.Checks), "leftover Deployment kubesphere-system/cluster-agent") {
		t.Errorf("checks = %v", p.Checks)
	}
}

func TestJoinPreflightVersionSkew(t *testing.T) {
	f := newJoinFixture(t)
	withClusters(t, f.member, strings.ReplaceAll(testCCYAML, "v3.4.1", "v3.3.2"))
	p, _ := split(f.join(JoinOptions{}, nil).Preflight(context.Background()))
	if p.HasErrors() || !strings.Contains(fmt.Sprint(p.Checks), "[warn] KubeSphere versions: host v3.4.1, member v3.3.2: not the same minor") {
		t.Errorf("checks = %v", p.Checks)
	}
}

func TestJoinPreflightName(t *testing.T) {
	f := newJoinFixture(t)
	p, _ := split(f.join(JoinOptions{Name: "Bad_Name"}, nil).Preflight(context.Background()))
	if !strings.Contains(errorsOf(p), "not a DNS label") {
		t.Errorf("errors:\n%s", errorsOf(p))
	}
}

func TestMemberPatch(t *testing.T) {
	f := newJoinFixture(t)
	cc := f.member.cc()
	p := MemberPatch(cc, Secret(hostJWT))
	if v, _ := p.Get("spec", "authentication", "jwtSecret"); v != hostJWT {
		t.Errorf("jwtSecret not in the patch")
	}
	if v, _ := p.Get("spec", "multicluster", "clusterRole"); v != kubesphere.RoleMember {
		t.Errorf("clusterRole = %v", v)
	}
	if v, _ := p.Get("spec", "authentication", "oauthOptions", "accessTokenMaxAge"); v != int64(0) {
		t.Errorf("accessTokenMaxAge = %v", v)
	}
	// Only the three fields: nothing else of the CC is in the patch.
	b, _ := p.JSON()
	if strings.Contains(string(b), "futureFeature") || strings.Contains(string(b), "etcd") {
		t.Errorf("patch touches other fields: %s", b)
	}
	// Applied → an empty patch on re-run.
	data, _ := p.JSON()
	if _, err := f.member.dyn.Resource(kubesphere.ClusterConfigurationGVR).Namespace(kubesphere.Namespace).Patch(context.Background(), kubesphere.ClusterConfigurationName, types.MergePatchType, data, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if p2 := MemberPatch(f.member.cc(), Secret(hostJWT)); !p2.Empty() {
		t.Errorf("re-run patch not empty: %v", p2.Redacted(jwtPath))
	}
	if v, _ := f.member.cc().Object.Object["spec"].(map[string]any)["futureFeature"]; v == nil {
		t.Error("unknown fields lost")
	}
	red := p.Redacted(jwtPath)
	rb, _ := json.Marshal(red)
	if strings.Contains(string(rb), hostJWT) {
		t.Error("redacted patch holds the secret")
	}
}

// TestJoinDryRunNeverPrintsTheSecret runs a client dry run and checks every output: the result in
// JSON and YAML, the objects, the progress lines and the preflight checks.
func TestJoinDryRunNeverPrintsTheSecret(t *testing.T) {
	f := newJoinFixture(t)
	rec := &recorder{}
	var checks []Check
	res, err := f.join(JoinOptions{DryRun: DryRunClient, OnPreflight: func(p *Preflight) { checks = p.Checks }}, rec).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(f.host.mutations()) + len(f.member.mutations()); n > 0 {
		t.Errorf("a client dry run changed something: %v %v", f.host.mutations(), f.member.mutations())
	}
	var out bytes.Buffer
	jb, _ := json.Marshal(res)
	yb, _ := yaml.Marshal(res)
	out.Write(jb)
	out.Write(yb)
	objs, _ := manifests.EncodeYAML(append(append([]*unstructured.Unstructured{}, res.HostObjects...), res.MemberObjects...))
	out.Write(objs)
	fmt.Fprint(&out, rec.steps, rec.warns, rec.progres, checks)
	if strings.Contains(out.String(), hostJWT) {
		t.Fatalf("the jwtSecret appears in the output:\n%s", out.String())
	}
	for _, want := range []string{"kind: Cluster", "kind: ClusterConfiguration", "jwtSecret: <redacted>", "kind: Deployment", "clusterRole: member", "--token=<redacted>"} {
		if !strings.Contains(string(objs), want) {
			t.Errorf("dry-run objects lack %q:\n%s", want, objs)
		}
	}
	if len(res.Pending) == 0 {
		t.Error("a dry run of a new Cluster must say the token is not known yet")
	}
}

func TestLikelyCause(t *testing.T) {
	notConnected := []kubesphere.ClusterCondition{{Type: kubesphere.ConditionInitialized, Status: "True"}, {Type: kubesphere.ConditionAgentAvailable, Status: "False"}}
	cases := []struct {
		conds      []kubesphere.ClusterCondition
		notRunning string
		logs       string
		want       string
	}{
		{notConnected, "", "dial tcp 203.0.113.10:30881: connect: connection refused", "is not reachable from the member"},
		{notConnected, "", "handshake: 401 Unauthorized", "token mismatch"},
		{notConnected, "", "x509: proxy certificate does not match --ca-cert-hash", "pinned CA hash"},
		{notConnected, "the agent pod is Pending", "", "the agent pod is Pending"},
		{[]kubesphere.ClusterCondition{{Type: kubesphere.ConditionAgentAvailable, Status: "True"}, {Type: kubesphere.ConditionReady, Status: "False", Message: "list nodes: EOF"}}, "", "", "agent is connected but KubeSphere cannot reach"},
		{nil, "", "", "has not picked up the Cluster"},
		{notConnected, "", "", "most likely that address is unreachable"},
	}
	for _, tc := range cases {
		got := likelyCause(tc.conds, tc.notRunning, tc.logs, "http://203.0.113.10:30881", " --context host", " --context member1")
		if !strings.Contains(got, tc.want) {
			t.Errorf("likelyCause(%v, %q, %q) = %q, want %q", tc.conds, tc.notRunning, tc.logs, got, tc.want)
		}
	}
}

// simulate plays the member's ks-installer, the host's proxy (token, AgentAvailable) and the
// cluster controller (Ready, status.uid) against the fakes until stop is called.
func (f *joinFixture) simulate(t *testing.T, connect bool) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
			// Member installer: render the CC's settings into kubesphere-config.
			if cc, err := GetClusterConfiguration(ctx, f.member.c); err == nil {
				cm, err := f.member.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Get(ctx, kubesphere.ConfigName, metav1.GetOptions{})
				if err == nil {
					raw := map[string]any{}
					_ = yaml.Unmarshal([]byte(cm.Data[kubesphere.ConfigKey]), &raw)
					if jwt := cc.JWTSecret(); !jwt.IsZero() {
						_ = unstructured.SetNestedField(raw, jwt.Reveal(), "authentication", "jwtSecret")
					}
					_ = unstructured.SetNestedField(raw, cc.ClusterRole(), "multicluster", "clusterRole")
					if cc.ClusterRole() == kubesphere.RoleMember {
						_ = unstructured.SetNestedField(raw, "0s", "authentication", "oauthOptions", "accessTokenMaxAge")
					}
					b, _ := yaml.Marshal(raw)
					if string(b) != cm.Data[kubesphere.ConfigKey] {
						cm.Data[kubesphere.ConfigKey] = string(b)
						_, _ = f.member.kube.CoreV1().ConfigMaps(kubesphere.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
					}
				}
			}
			// Agent rollout.
			agentUp := false
			if d, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.AgentName, metav1.GetOptions{}); err == nil {
				if d.Status.AvailableReplicas != 1 {
					d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
					_, _ = f.member.kube.AppsV1().Deployments(kubesphere.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
				}
				agentUp = true
			}
			// Proxy and controller.
			list, err := f.host.dyn.Resource(kubesphere.ClusterGVR).List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			for i := range list.Items {
				c := &list.Items[i]
				before, _ := json.Marshal(c.Object)
				if tok, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token"); tok == "" {
					_ = unstructured.SetNestedField(c.Object, strings.Repeat("7", 64), "spec", "connection", "token")
				}
				if agentUp && connect {
					setCond(c, kubesphere.ConditionAgentAvailable, "True")
					setCond(c, kubesphere.ConditionReady, "True")
					_ = unstructured.SetNestedField(c.Object, "uid-member", "status", "uid")
				}
				if after, _ := json.Marshal(c.Object); string(after) != string(before) {
					_, _ = f.host.dyn.Resource(kubesphere.ClusterGVR).Update(ctx, c, metav1.UpdateOptions{})
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

func setCond(c *unstructured.Unstructured, typ, status string) {
	conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	for _, raw := range conds {
		if m := raw.(map[string]any); m["type"] == typ {
			m["status"] = status
			_ = unstructured.SetNestedSlice(c.Object, conds, "status", "conditions")
			return
		}
	}
	conds = append(conds, map[string]any{"type": typ, "status": status, "lastTransitionTime": "2026-11-25T20:00:00Z"})
	_ = unstructured.SetNestedSlice(c.Object, conds, "status", "conditions")
}

func TestJoinRunEndToEndWithFakes(t *testing.T) {
	f := newJoinFixture(t)
	stop := f.simulate(t, true)
	defer stop()
	rec := &recorder{}
	res, err := f.join(JoinOptions{Timeout: 20 * time.Second, Group: "prod"}, rec).Run(context.Background())
	if err != nil {
		t.Fatalf("join: %v\nsteps: %v", err, rec.steps)
	}
	if !res.Changed || res.Adopted || res.Tunnel != kubesphere.TunnelTower {
		t.Errorf("result = %+v", res)
	}
	// Member CC carries the host's secret; the agent has the proxy's token.
	if jwt := f.member.cc().JWTSecret(); jwt.Reveal() != hostJWT {
		t.Error("member jwtSecret was not set to the host's")
	}
	d, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(context.Background(), kubesphere.AgentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if info := InspectAgent(d); info.ProxyServer != "http://203.0.113.10:30881" || info.ClusterName != "member1" {
		t.Errorf("agent = %+v", info)
	}
	c, _ := GetCluster(context.Background(), f.host.c, "member1")
	if c == nil || c.GetLabels()[kubesphere.ClusterGroupLabel] != "prod" || c.GetAnnotations()[kubesphere.MemberUIDAnnotation] != "uid-member" {
		t.Fatalf("cluster = %v", c)
	}
	// A re-run changes nothing.
	f.host.clearActions()
	f.member.clearActions()
	rec2 := &recorder{}
	res2, err := f.join(JoinOptions{Timeout: 20 * time.Second, Group: "prod"}, rec2).Run(context.Background())
	if err != nil {
		t.Fatalf("re-run: %v", err)
	}
	if res2.Changed || !res2.Adopted {
		t.Errorf("re-run changed %v (adopted %v): %+v", res2.Changed, res2.Adopted, res2.Changes)
	}
	for _, a := range append(f.host.mutations(), f.member.mutations()...) {
		if a.GetResource().Resource == "clusters" && a.GetVerb() == "update" {
			continue // the simulated controller
		}
		if a.GetResource().Resource == "deployments" && a.GetSubresource() == "status" {
			continue
		}
		if pa, ok := a.(interface{ GetPatchType() types.PatchType }); ok && pa.GetPatchType() == types.ApplyPatchType && a.GetResource().Resource != "clusters" {
			continue // an apply that changes nothing is allowed (checked through resourceVersion)
		}
		t.Errorf("re-run mutated: %s %s", a.GetVerb(), a.GetResource().Resource)
	}
	all := fmt.Sprint(rec.steps, rec.warns, rec.progres, rec2.steps, rec2.warns, rec2.progres)
	if b, _ := json.Marshal([]any{res, res2}); strings.Contains(string(b)+all, hostJWT) || strings.Contains(string(b)+all, strings.Repeat("7", 64)) {
		t.Error("a secret (jwtSecret or agent token) appears in the output")
	}
}

func TestJoinTimeoutExplains(t *testing.T) {
	f := newJoinFixture(t)
	stop := f.simulate(t, false)
	defer stop()
	_, err := f.join(JoinOptions{Timeout: 1500 * time.Millisecond}, nil).Run(context.Background())
	var te *ConnectTimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want a ConnectTimeoutError", err)
	}
	msg := err.Error()
	t.Log(msg)
	for _, want := range []string{"timed out", "conditions:", "agent pod:", "likeliest cause:"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, strings.Repeat("7", 64)) || strings.Contains(msg, hostJWT) {
		t.Error("the timeout message holds a secret")
	}
}

// An API error that quotes the jwtSecret (a 422 does) must not carry it out of Join.
func TestJoinErrorsAreScrubbed(t *testing.T) {
	f := newJoinFixture(t)
	f.member.dyn.PrependReactor("patch", "clusterconfigurations", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf(`ClusterConfiguration "ks-installer" is invalid: spec.authentication.jwtSecret: Invalid value: %q`, hostJWT)
	})
	_, err := f.join(JoinOptions{Timeout: 5 * time.Second}, nil).Run(context.Background())
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), hostJWT) || !strings.Contains(err.Error(), "Invalid value") {
		t.Errorf("error = %v", err)
	}
}

func TestJoinPinsTheBundledProxyCA(t *testing.T) {
	f := newJoinFixture(t)
	ctx := context.Background()
	setConfig(f.host, strings.Replace(hostKSConfig, "http://203.0.113.10:30881", "https://203.0.113.10:30881", 1))
	d, _ := f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	d.Spec.Template.Spec.Containers[0].Command = nil
	d.Spec.Template.Spec.Containers[0].Args = []string{"proxy", "--bind-address=$(POD_IP)"}
	_, _ = f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Update(ctx, d, metav1.UpdateOptions{})
	// No CA Secret yet: an error that names the flag.
	p, _ := split(f.join(JoinOptions{}, nil).Preflight(ctx))
	if !strings.Contains(errorsOf(p), "--ca-cert-hash") {
		t.Fatalf("errors:\n%s", errorsOf(p))
	}
	ca, err := tunnel.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.host.kube.CoreV1().Secrets(kubesphere.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: kubesphere.CASecretName, Namespace: kubesphere.Namespace},
		Data:       map[string][]byte{corev1.TLSCertKey: ca.CertPEM, corev1.TLSPrivateKeyKey: ca.KeyPEM}}, metav1.CreateOptions{})
	p, st := split(f.join(JoinOptions{}, nil).Preflight(ctx))
	if p.HasErrors() || st == nil {
		t.Fatalf("errors:\n%s", errorsOf(p))
	}
	if st.tunnel != kubesphere.TunnelKsMc || st.caHash != ca.Hash() {
		t.Errorf("tunnel %s pin %s, want ks-mc %s", st.tunnel, st.caHash, ca.Hash())
	}
	// The CA key never shows up in the checks.
	if strings.Contains(fmt.Sprint(p.Checks), string(ca.KeyPEM)) {
		t.Error("CA key in output")
	}
}

// A ks-mc agent must not hand its token to an http:// proxy address unless the host's proxy was
// rendered with --allow-plaintext-agents: join refuses in preflight, changes nothing, and says how
// to publish https (or opt in on the host).
func TestJoinRefusesPlaintextKsMcProxy(t *testing.T) {
	f := newJoinFixture(t)
	ctx := context.Background()
	d, _ := f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	d.Spec.Template.Spec.Containers[0].Command = nil
	d.Spec.Template.Spec.Containers[0].Args = []string{"proxy", "--bind-address=$(POD_IP)"}
	_, _ = f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Update(ctx, d, metav1.UpdateOptions{})
	f.host.clearActions()
	f.member.clearActions()
	p, _ := split(f.join(JoinOptions{}, nil).Preflight(ctx))
	mustContain(t, errorsOf(p), "the proxy address http://203.0.113.10:30881 is plain http",
		"--tunnel=ks-mc --proxy-publish-address https://203.0.113.10:30881", "--allow-plaintext-agents")
	if m := append(f.host.mutations(), f.member.mutations()...); len(m) != 0 {
		t.Errorf("a refused join sent %v", m)
	}
	if _, err := f.join(JoinOptions{Timeout: time.Second}, nil).Run(ctx); err == nil {
		t.Fatal("join over http:// to a ks-mc proxy that refuses plaintext agents succeeded")
	}
	// The host's consent, read from the proxy's arguments.
	d.Spec.Template.Spec.Containers[0].Args = append(d.Spec.Template.Spec.Containers[0].Args, manifests.ProxyAllowPlaintextArg)
	_, _ = f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Update(ctx, d, metav1.UpdateOptions{})
	if p, _ := split(f.join(JoinOptions{}, nil).Preflight(ctx)); strings.Contains(errorsOf(p), "plain http") {
		t.Fatalf("refused although the proxy allows plaintext agents:\n%s", errorsOf(p))
	}
	// KubeSphere's Tower is not concerned (it does its own transport).
	d.Spec.Template.Spec.Containers[0].Args = []string{"--ca-cert=/x"}
	_, _ = f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Update(ctx, d, metav1.UpdateOptions{})
	if p, _ := split(f.join(JoinOptions{}, nil).Preflight(ctx)); strings.Contains(errorsOf(p), "plain http") {
		t.Fatalf("a Tower host refused:\n%s", errorsOf(p))
	}
}

// A member joined with Tower's agent is moved to the bundled agent once the host runs the ks-mc
// proxy: the old Deployment (whose command another manager owns) is replaced, not merged.
func TestJoinReplacesTowerAgentWithBundledAgent(t *testing.T) {
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false))
	ctx := context.Background()
	d, _ := f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.TowerName, metav1.GetOptions{})
	d.Spec.Template.Spec.Containers[0].Command = nil
	// The fixture's address is http://: the host's proxy accepts plaintext agents (init-host
	// --allow-plaintext-agents); without that, join refuses (TestJoinRefusesPlaintextKsMcProxy).
	d.Spec.Template.Spec.Containers[0].Args = []string{"proxy", manifests.ProxyAllowPlaintextArg}
	_, _ = f.host.kube.AppsV1().Deployments(kubesphere.Namespace).Update(ctx, d, metav1.UpdateOptions{})
	_, _ = f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Create(ctx, agentDeployment(t, "http://203.0.113.10:30881", "member1"), metav1.CreateOptions{})
	stop := f.simulate(t, true)
	defer stop()
	res, err := f.join(JoinOptions{Timeout: 20 * time.Second}, nil).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.member.kube.AppsV1().Deployments(kubesphere.Namespace).Get(ctx, kubesphere.AgentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := got.Spec.Template.Spec.Containers[0]
	if res.Tunnel != kubesphere.TunnelKsMc || len(c.Command) != 0 || c.Args[0] != "agent" {
		t.Errorf("tunnel %s, command %q args %q", res.Tunnel, c.Command, c.Args)
	}
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--token=") {
			t.Errorf("token on the command line: %s", manifests.RedactArg(a))
		}
	}
	if _, err := f.member.kube.CoreV1().Secrets(kubesphere.Namespace).Get(ctx, kubesphere.AgentTokenSecretName, metav1.GetOptions{}); err != nil {
		t.Errorf("token Secret: %v", err)
	}
}
