package installer

import (
	"context"
	"fmt"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

const pendingToken = "<assigned by the host's proxy>"

func (j *Join) waitToken(ctx context.Context, cluster *unstructured.Unstructured) (string, error) {
	token, _, _ := unstructured.NestedString(cluster.Object, "spec", "connection", "token")
	if token != "" {
		return token, nil
	}
	if j.opts.DryRun.Enabled() {
		j.result.Pending = append(j.result.Pending, "the agent token (the host's proxy assigns it to the new Cluster)")
		return pendingToken, nil
	}
	var observed string
	for {
		c, err := GetCluster(ctx, j.host, j.opts.Name)
		switch {
		case err != nil:
			observed = err.Error()
		case c == nil:
			observed = "the Cluster disappeared"
		default:
			token, _, _ = unstructured.NestedString(c.Object, "spec", "connection", "token")
			if token != "" {
				j.rep.Step("host: the proxy assigned the agent token")
				return token, nil
			}
			observed = DescribeConditions(ClusterConditions(c))
		}
		j.rep.Progress(fmt.Sprintf("waiting for the host's proxy to assign a token to Cluster %s: %s", j.opts.Name, observed))
		if time.Now().After(j.deadline) {
			return "", fmt.Errorf("timed out after %s waiting for the host's proxy to fill spec.connection.token of Cluster %s (last seen: %s)\n"+
				"is the proxy running? kubectl -n %s get deployment %s%s; kubectl -n %s logs deployment/%s%s",
				j.opts.Timeout, j.opts.Name, observed, kubesphere.Namespace, kubesphere.TowerName, j.host.contextFlag(), kubesphere.Namespace, kubesphere.TowerName, j.host.contextFlag())
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(j.opts.PollInterval):
		}
	}
}

// ConnectTimeoutError explains a join that did not become Ready in time.
type ConnectTimeoutError struct {
	Name       string
	Timeout    time.Duration
	Conditions []kubesphere.ClusterCondition
	// Agent describes the agent pods; Logs are the last agent log lines (secrets scrubbed).
	Agent []string
	Logs  []string
	// Cause is the likeliest cause, in words, with what to check.
	Cause string
}

func (e *ConnectTimeoutError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "timed out after %s waiting for Cluster %s to become Ready\n", e.Timeout, e.Name)
	fmt.Fprintf(&b, "conditions: %s\n", DescribeConditions(e.Conditions))
	for _, a := range e.Agent {
		fmt.Fprintf(&b, "agent pod: %s\n", a)
	}
	if len(e.Logs) > 0 {
		b.WriteString("last agent log lines:\n")
		for _, l := range e.Logs {
			b.WriteString("  " + l + "\n")
		}
	}
	b.WriteString("likeliest cause: " + e.Cause)
	return b.String()
}

func (j *Join) waitConnected(ctx context.Context, st *joinState, token string) error {
	var conds []kubesphere.ClusterCondition
	phase := kubesphere.ConditionAgentAvailable
	for {
		c, err := GetCluster(ctx, j.host, j.opts.Name)
		observed := ""
		switch {
		case err != nil:
			observed = err.Error()
		case c == nil:
			return fmt.Errorf("cluster %s was deleted on the host while waiting for it to connect", j.opts.Name)
		default:
			conds = ClusterConditions(c)
			j.result.Conditions = conds
			if conditionTrue(conds, kubesphere.ConditionAgentAvailable) && phase == kubesphere.ConditionAgentAvailable {
				j.rep.Step("host: the agent connected to the proxy (AgentAvailable=True)")
				phase = kubesphere.ConditionReady
			}
			if phase == kubesphere.ConditionReady && conditionTrue(conds, kubesphere.ConditionReady) {
				j.rep.Step(fmt.Sprintf("host: Cluster %s is Ready", j.opts.Name))
				return nil
			}
			observed = DescribeConditions(conds)
		}
		what := "the agent to connect (AgentAvailable)"
		if phase == kubesphere.ConditionReady {
			what = "KubeSphere to reach the member (Ready)"
		}
		j.rep.Progress(fmt.Sprintf("waiting for %s: %s (%s left)", what, observed, max(time.Until(j.deadline).Round(time.Second), 0)))
		if time.Now().After(j.deadline) {
			return j.diagnose(ctx, st, conds, token)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(j.opts.PollInterval):
		}
	}
}

// diagnose gathers what a timed-out join saw and guesses the cause.
func (j *Join) diagnose(ctx context.Context, st *joinState, conds []kubesphere.ClusterCondition, token string) error {
	e := &ConnectTimeoutError{Name: j.opts.Name, Timeout: j.opts.Timeout, Conditions: conds}
	scrub := func(s string) string { return manifests.Scrub(s, token, j.jwt.Reveal()) }
	sel := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: manifests.AgentSelectorFor(agentNameFor(st))})
	pods, err := j.member.Kube.CoreV1().Pods(kubesphere.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	var notRunning string
	if err != nil {
		e.Agent = append(e.Agent, "cannot list: "+scrub(err.Error()))
	} else if len(pods.Items) == 0 {
		e.Agent = append(e.Agent, "none found")
		notRunning = "no agent pod exists on the member"
	}
	var logText string
	if pods != nil && len(pods.Items) > 0 {
		pod := newestPod(pods.Items)
		e.Agent = append(e.Agent, describePod(pod))
		if pod.Status.Phase != corev1.PodRunning {
			notRunning = "the agent pod is " + string(pod.Status.Phase)
		}
		tail := int64(15)
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		raw, err := j.member.Kube.CoreV1().Pods(kubesphere.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{TailLines: &tail}).Do(lctx).Raw()
		cancel()
		if err == nil {
			logText = scrub(string(raw))
			for _, l := range strings.Split(strings.TrimRight(logText, "\n"), "\n") {
				if l != "" {
					e.Logs = append(e.Logs, l)
				}
			}
		} else {
			e.Logs = append(e.Logs, "(logs unavailable: "+scrub(apiReason(err))+")")
		}
	}
	e.Cause = likelyCause(conds, notRunning, logText, st.proxyAddress, j.host.contextFlag(), j.member.contextFlag())
	return e
}

// likelyCause maps what was observed to the most probable reason a member did not connect.
func likelyCause(conds []kubesphere.ClusterCondition, notRunning, logs, proxy, hostFlag, memberFlag string) string {
	kind := classifyAgentLogs(logs)
	switch {
	case notRunning != "":
		return notRunning + ": check kubectl -n kubesphere-system describe pods -l app=agent" + memberFlag
	case conditionTrue(conds, kubesphere.ConditionAgentAvailable):
		msg := ""
		if c := FindCondition(conds, kubesphere.ConditionReady); c != nil && c.Message != "" {
			msg = " (" + c.Message + ")"
		}
		return "the agent is connected but KubeSphere cannot reach the member through the tunnel" + msg +
			": check ks-controller-manager's logs on the host (kubectl -n kubesphere-system logs deployment/ks-controller-manager" + hostFlag + ")"
	case kind == logCertificate:
		return "the proxy's TLS certificate does not match the pinned CA hash: re-run join so the current pin is used"
	case kind == logTokenRejected || kind == logUnknownCluster:
		return "token mismatch: the agent's token is not the one in the host's Cluster spec.connection.token; re-run join to re-render the agent"
	case kind == logDial || kind == logDNS || kind == logHandshake:
		return "the proxy address " + proxy + " is not reachable from the member (firewall, NodePort, load balancer, or an L7 proxy dropping the Upgrade header): " +
			"check it from a member node with curl " + proxy + "/health; fix it with kubectl ks-mc init-host --proxy-publish-address" + hostFlag
	case FindCondition(conds, kubesphere.ConditionInitialized) == nil && FindCondition(conds, kubesphere.ConditionAgentAvailable) == nil:
		return "the host's proxy has not picked up the Cluster (no Initialized condition): check kubectl -n kubesphere-system logs deployment/tower" + hostFlag
	default:
		return "the agent has not connected to the proxy at " + proxy + ": most likely that address is unreachable from the member; check curl " + proxy + "/health from a member node and the agent's logs (kubectl -n kubesphere-system logs deployment/cluster-agent" + memberFlag + ")"
	}
}
