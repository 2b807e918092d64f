package installer

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

type recordingReporter struct {
	mu    sync.Mutex
	lines []string
}

func (r *recordingReporter) add(s string)      { r.mu.Lock(); r.lines = append(r.lines, s); r.mu.Unlock() }
func (r *recordingReporter) Step(s string)     { r.add(s) }
func (r *recordingReporter) Progress(s string) {}
func (r *recordingReporter) Warn(s string)     { r.add("WARN " + s) }

// unjoin --force of a member that is gone, with KubeSphere 3.4's Cluster webhook: it refuses
// every update of the Cluster (finalizer removals included) because it cannot reach the member.
func TestUnjoinForcePastClusterWebhook(t *testing.T) {
	ctx := context.Background()
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false))
	c, _ := GetCluster(ctx, f.host.c, "member1")
	c.SetFinalizers([]string{"finalizer.cluster.kubesphere.io"})
	if _, err := f.host.dyn.Resource(kubesphere.ClusterGVR).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: ClusterWebhookConfigName, UID: "vwc-uid"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: ClusterWebhookName}}}
	if _, err := f.host.kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, vwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vwcGVR := admissionregistrationv1.SchemeGroupVersion.WithResource("validatingwebhookconfigurations")
	webhookActive := func() bool {
		_, err := f.host.kube.Tracker().Get(vwcGVR, "", ClusterWebhookConfigName)
		return err == nil
	}
	gr := schema.GroupResource{Group: "cluster.kubesphere.io", Resource: "clusters"}
	var refusedPatches int
	// Finalizer semantics: delete only marks the Cluster; a patch is refused while the webhook is on.
	f.host.dyn.PrependReactor("delete", "clusters", func(k8stesting.Action) (bool, runtime.Object, error) {
		obj, err := f.host.dyn.Tracker().Get(kubesphere.ClusterGVR, "", "member1")
		if err != nil {
			return true, nil, err
		}
		cur := obj.(metav1.Object)
		now := metav1.Now()
		cur.SetDeletionTimestamp(&now)
		_ = f.host.dyn.Tracker().Update(kubesphere.ClusterGVR, obj, "")
		return true, nil, nil
	})
	f.host.dyn.PrependReactor("patch", "clusters", func(k8stesting.Action) (bool, runtime.Object, error) {
		if webhookActive() {
			refusedPatches++
			return true, nil, apierrors.NewForbidden(gr, "member1",
				errString(`admission webhook "validating-cluster.kubesphere.io" denied the request: dial tcp 10.96.0.5:6443: connect: connection refused`))
		}
		_ = f.host.dyn.Tracker().Delete(kubesphere.ClusterGVR, "", "member1")
		return true, nil, nil
	})
	rep := &recordingReporter{}
	res, err := Unjoin(ctx, f.host.c, nil, UnjoinOptions{Name: "member1", Force: true, Timeout: 50 * time.Millisecond, PollInterval: 10 * time.Millisecond}, rep)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := GetCluster(ctx, f.host.c, "member1"); c != nil {
		t.Fatal("--force left the Cluster")
	}
	if refusedPatches == 0 {
		t.Fatal("the test's webhook refused nothing")
	}
	got, err := f.host.kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, ClusterWebhookConfigName, metav1.GetOptions{})
	if err != nil || len(got.Webhooks) != 1 || got.Webhooks[0].Name != ClusterWebhookName {
		t.Fatalf("the webhook configuration is not restored: %v %+v", err, got)
	}
	all := strings.Join(rep.lines, "\n")
	if !strings.Contains(all, "suspends ValidatingWebhookConfiguration cluster.kubesphere.io") || !strings.Contains(all, "create host ValidatingWebhookConfiguration") {
		t.Fatalf("the suspension is not reported:\n%s", all)
	}
	var objs []string
	for _, ch := range res.Changes {
		objs = append(objs, ch.Action+" "+ch.Object)
	}
	if want := "delete host ValidatingWebhookConfiguration cluster.kubesphere.io"; !strings.Contains(strings.Join(objs, ","), want) {
		t.Fatalf("changes %v lack %q", objs, want)
	}
}

// Without --force the timeout names the webhook and what to do.
func TestUnjoinTimeoutNamesClusterWebhook(t *testing.T) {
	ctx := context.Background()
	f := newJoinFixture(t, memberCluster("member1", "uid-member", false))
	gr := schema.GroupResource{Group: "cluster.kubesphere.io", Resource: "clusters"}
	f.host.dyn.PrependReactor("delete", "clusters", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, nil })
	f.host.dyn.PrependReactor("patch", "clusters", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(gr, "member1", errString(`admission webhook "validating-cluster.kubesphere.io" denied the request: connection refused`))
	})
	_, err := Unjoin(ctx, f.host.c, f.member.c, UnjoinOptions{Name: "member1", Timeout: 30 * time.Millisecond, PollInterval: 10 * time.Millisecond}, nil)
	if err == nil || !strings.Contains(err.Error(), "validating-cluster.kubesphere.io") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("err = %v", err)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
