package installer

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// maxHeartbeatSkew: a renewTime up to this far in the future is the clock estimate's error.
const maxHeartbeatSkew = 3 * time.Second

// agentProblems compares the member's agent Deployment with the Cluster and the host (never
// printing the token).
func (k *checker) agentProblems(m *memberData, c *unstructured.Unstructured) []string {
	if m == nil || m.agent == nil || c == nil {
		return nil
	}
	var out []string
	info := InspectAgent(m.agent)
	if info.ClusterName != c.GetName() {
		out = append(out, fmt.Sprintf("the agent's --name is %q, the Cluster is %q", info.ClusterName, c.GetName()))
	}
	tok, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "token")
	switch {
	case m.tokenErr != nil:
		out = append(out, "cannot read the agent's token Secret: "+errText(m.tokenErr))
	case tok == "":
		out = append(out, "the Cluster has no spec.connection.token yet")
	case !digestEqual(Secret(strings.TrimSpace(m.agentToken.Reveal())), Secret(tok)):
		out = append(out, "the agent's token is not the Cluster's spec.connection.token (digests differ)")
	}
	if addr := k.h.healthAddr; addr != "" && !sameProxy(info.ProxyServer, addr) {
		out = append(out, fmt.Sprintf("the agent dials %s, the host publishes %s", info.ProxyServer, addr))
	}
	return out
}

func podProblems(pods []corev1.Pod) (problems []string, restarts int32, crash bool) {
	for _, p := range pods {
		ready := false
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		for _, cs := range p.Status.ContainerStatuses {
			restarts += cs.RestartCount
			if w := cs.State.Waiting; w != nil && w.Reason == "CrashLoopBackOff" {
				crash = true
				problems = append(problems, p.Name+": CrashLoopBackOff")
			}
		}
		if !ready && p.DeletionTimestamp == nil {
			problems = append(problems, fmt.Sprintf("%s: %s, not ready", p.Name, p.Status.Phase))
		}
	}
	return problems, restarts, crash
}

func (k *checker) clusterByName(name string) *unstructured.Unstructured {
	for i := range k.h.clusters {
		if k.h.clusters[i].GetName() == name {
			return &k.h.clusters[i]
		}
	}
	return nil
}

// tunnelCheck combines the evidence that a tunnel is live right now (not what the conditions say).
func (k *checker) tunnelCheck(c *unstructured.Unstructured, subj string, conds []kubesphere.ClusterCondition, m *memberData) {
	name := c.GetName()
	f := Finding{ID: CheckClusterTunnel, Subject: subj}
	var live, dead bool
	var cause, see string
	agentAvail := conditionTrue(conds, kubesphere.ConditionAgentAvailable)
	kind := TunnelOf(k.h.tower)
	if kind == kubesphere.TunnelKsMc {
		live, dead = k.heartbeatEvidence(&f, name)
	}
	if m != nil {
		dead, cause, see = k.memberAgentEvidence(&f, m, c, live, dead)
	}
	if k.serviceProxyEvidence(&f, name) {
		live = true
	}
	if kind == kubesphere.TunnelTower && !live && !dead && agentAvail {
		// Tower writes no heartbeat: a ready agent that does not crash, with AgentAvailable=True,
		// is the best evidence there is.
		f.Sources = append(f.Sources, SourceConditions)
		if m != nil && m.agent != nil && m.agent.Status.ReadyReplicas > 0 {
			live = true
		}
	}
	if cause == "" && dead && k.addressFailed() {
		cause, see = "the host's proxyPublishAddress does not match the tower Service", CheckHostAddress
	}
	stale := ""
	if agentAvail {
		stale = " although AgentAvailable=True (a stale condition)"
	}
	switch {
	case dead:
		f.Status = DiagFail
		f.Summary = "no live tunnel" + stale
		if cause != "" {
			f.Summary += ": " + cause
		}
		f.LatencyMS = nil
		if f.Fix == nil {
			switch {
			case see != "":
				f.Fix = &Fix{Action: "fix " + see + " first", See: see}
			case m != nil:
				f.Fix = k.joinFix(m, "re-run join, which re-renders the agent and reports why it does not connect")
			default:
				f.Fix = &Fix{Action: "pass the member's context to see the agent side", KsMc: append(append([]string{"diagnose"}, k.hostFlag...), "--context", "CONTEXT_OF_"+name)}
			}
		}
	case live:
		f.Status = DiagOK
		f.Summary = "tunnel live (" + strings.Join(f.Sources, ", ") + ")"
	case agentAvail:
		f.Status = DiagWarn
		f.Summary = "AgentAvailable=True but no evidence that the tunnel is live right now"
		f.Fix = &Fix{Action: "pass the member's context so the agent side is read", KsMc: append(append([]string{"diagnose"}, k.hostFlag...), "--context", "CONTEXT_OF_"+name)}
	default:
		f.Status = DiagFail
		f.Summary = "the agent is not connected (AgentAvailable is not True)"
		if cause != "" {
			f.Summary += ": " + cause
		}
		if see != "" {
			f.Fix = &Fix{Action: "fix " + see + " first", See: see}
		} else {
			f.Fix = &Fix{Action: "pass the member's context to see the agent side", KsMc: append(append([]string{"diagnose"}, k.hostFlag...), "--context", "CONTEXT_OF_"+name)}
		}
	}
	k.add(f)
}

// heartbeatEvidence reads the proxy's heartbeat Lease of the Cluster (ks-mc proxy).
func (k *checker) heartbeatEvidence(f *Finding, name string) (live, dead bool) {
	f.Sources = append(f.Sources, SourceHeartbeat)
	lease := k.h.leases[name]
	switch {
	case k.h.leasesErr != nil:
		f.Evidence = append(f.Evidence, "heartbeat: cannot read Leases: "+errText(k.h.leasesErr))
	case lease == nil && len(k.h.leases) == 0:
		f.Evidence = append(f.Evidence, "heartbeat: the proxy writes no heartbeat Leases (an older ks-mc proxy?)")
	case lease == nil:
		dead = true
		f.Evidence = append(f.Evidence, "heartbeat: no Lease "+kubesphere.HeartbeatLeaseName(name)+": the proxy has held no session of this cluster")
	default:
		agents, _ := strconv.Atoi(lease.Annotations[kubesphere.HeartbeatAgentsAnnotation])
		var age time.Duration = -1
		if lease.Spec.RenewTime != nil {
			// The proxy's clock is the host's: compare in the host apiserver's time.
			age = k.now.Add(k.h.clock).Sub(lease.Spec.RenewTime.Time)
		}
		dur := 30 * time.Second
		if lease.Spec.LeaseDurationSeconds != nil {
			dur = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
		}
		if age < 0 && age > -maxHeartbeatSkew && lease.Spec.RenewTime != nil {
			age = 0 // within the error of the clock offset estimate
		}
		switch {
		case age < 0 || age > dur:
			dead = true
			f.Evidence = append(f.Evidence, fmt.Sprintf("heartbeat: stale, last renewed %s ago (lasts %s): the proxy holds no session or is down", fmtAge(age), dur))
		case agents == 0:
			dead = true
			msg := fmt.Sprintf("heartbeat %s ago: 0 agent sessions", fmtAge(age))
			if e := lease.Annotations[kubesphere.HeartbeatErrorAnnotation]; e != "" {
				msg += " (" + e + ")"
			}
			f.Evidence = append(f.Evidence, msg)
		default:
			live = true
			f.Evidence = append(f.Evidence, fmt.Sprintf("heartbeat %s ago: %d agent session(s) answered a ping through the tunnel", fmtAge(age), agents))
			if d, err := time.ParseDuration(lease.Annotations[kubesphere.HeartbeatRTTAnnotation]); err == nil && d > 0 {
				f.LatencyMS = ms(d)
			}
		}
	}
	return live, dead
}

// memberAgentEvidence reads the agent side: Deployment, pods, logs, and what the agent is
// configured with; dead is passed in and returned, possibly set.
func (k *checker) memberAgentEvidence(f *Finding, m *memberData, c *unstructured.Unstructured, live, dead bool) (_ bool, cause, see string) {
	f.Sources = append(f.Sources, SourceMemberAgent)
	switch {
	case m.agentErr != nil:
		f.Evidence = append(f.Evidence, "member: cannot read the agent Deployment: "+errText(m.agentErr))
	case m.agent == nil:
		dead, cause = true, "no agent Deployment on the member"
		f.Evidence = append(f.Evidence, "member: no Deployment kubesphere-system/cluster-agent")
	case replicas(m.agent) == 0:
		dead, cause = true, "the agent Deployment is scaled to 0"
		f.Evidence = append(f.Evidence, "member: cluster-agent has replicas 0")
		f.Fix = &Fix{Action: "scale the agent back up", Kubectl: append([]string{"-n", kubesphere.Namespace, "scale", "deployment/" + kubesphere.AgentName, "--replicas=1"}, hostCtxArgs(m.c)...)}
	case m.agent.Status.ReadyReplicas == 0:
		dead = true
		f.Evidence = append(f.Evidence, fmt.Sprintf("member: cluster-agent 0/%d ready", replicas(m.agent)))
	default:
		f.Evidence = append(f.Evidence, fmt.Sprintf("member: cluster-agent %d/%d ready", m.agent.Status.ReadyReplicas, replicas(m.agent)))
	}
	probs, _, crash := podProblems(m.pods)
	if crash {
		dead = true
	}
	for _, p := range probs {
		f.Evidence = append(f.Evidence, "member: pod "+p)
	}
	var logs []string
	for _, l := range m.logs {
		logs = append(logs, l)
	}
	if lc, ls := agentLogCause(strings.Join(logs, "\n")); lc != "" && (dead || !live) {
		if cause == "" {
			cause, see = lc, ls
		}
		f.Evidence = append(f.Evidence, "member: agent logs: "+lc)
	}
	if probs := k.agentProblems(m, c); len(probs) > 0 && cause == "" {
		cause, see = probs[0], CheckMemberAgent
	}
	return dead, cause, see
}

// serviceProxyEvidence: the member answered through the host's service proxy (mc-NAME).
func (k *checker) serviceProxyEvidence(f *Finding, name string) (live bool) {
	r, ok := k.h.svcProxy[name]
	if !ok {
		return false
	}
	if r.err == nil {
		live = true
		f.Sources = append(f.Sources, SourceServiceProxy)
		f.Evidence = append(f.Evidence, "service proxy: the member answered GET /version through mc-"+name)
		if f.LatencyMS == nil {
			f.LatencyMS = ms(r.rtt)
		}
	} else {
		f.Evidence = append(f.Evidence, "service proxy: no answer through mc-"+name+" (inconclusive: "+firstLine(errText(r.err))+")")
	}
	return live
}

func (k *checker) addressFailed() bool {
	for _, f := range k.out {
		if f.ID == CheckHostAddress && f.Status == DiagFail {
			return true
		}
	}
	return false
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// memberChecks: the member context matched to a Cluster, its settings (role, installer,
// jwtSecret, accessTokenMaxAge), clock, identity and agent.
func (k *checker) memberChecks(m *memberData) {
	subj := memberSubject(m)
	if !k.memberMatchCheck(m, subj) {
		return
	}
	k.memberSettingsChecks(m, subj)
	k.memberClockCheck(m, subj)
	if m.cluster == "" {
		return
	}
	cl := k.clusterByName(m.cluster)
	k.memberUIDCheck(m, subj, cl)
	k.memberAgentCheck(m, subj, cl)
}

func memberSubject(m *memberData) string {
	if m.cluster != "" {
		return "cluster/" + m.cluster
	}
	return "context/" + m.c.Context
}

// memberMatchCheck: false when the member cannot be reached at all (no further checks).
func (k *checker) memberMatchCheck(m *memberData, subj string) bool {
	if m.ccErr != nil && m.cfgErr != nil && m.uidErr != nil {
		k.add(Finding{ID: CheckMemberMatch, Status: DiagFail, Subject: subj, Summary: "cannot reach the member through context " + m.c.Context, Evidence: []string{firstLine(errText(m.uidErr))}})
		return false
	}
	switch {
	case m.cluster == "":
		k.add(Finding{ID: CheckMemberMatch, Status: DiagWarn, Subject: subj, Summary: "context " + m.c.Context + " matches no Cluster on the host (kube-system UID " + m.uid + ")",
			Fix: k.joinFix(m, "join it")})
	default:
		k.add(Finding{ID: CheckMemberMatch, Status: DiagOK, Subject: subj, Summary: "context " + m.c.Context + " is Cluster " + m.cluster + " (by " + m.matchedBy + ")"})
	}
	return true
}

func (k *checker) memberSettingsChecks(m *memberData, subj string) {
	cc := "ClusterConfiguration " + kubesphere.Namespace + "/" + kubesphere.ClusterConfigurationName + " (context " + m.c.Context + ")"
	join := func(action string) *Fix { return k.joinFix(m, action) }
	switch {
	case m.ccErr != nil:
		k.add(Finding{ID: CheckMemberRole, Status: DiagFail, Subject: subj, Summary: "cannot read the member's ClusterConfiguration", Evidence: []string{errText(m.ccErr)}})
	case m.cc.ClusterRole() != kubesphere.RoleMember:
		k.add(Finding{ID: CheckMemberRole, Status: DiagFail, Subject: subj, Summary: "clusterRole is " + strconv.Quote(m.cc.ClusterRole()) + ", not member",
			Fix: withSetting(join("re-run join, which sets it"), cc+" spec.multicluster.clusterRole: member")})
	default:
		k.add(Finding{ID: CheckMemberRole, Status: DiagOK, Subject: subj, Summary: "clusterRole member"})
	}
	switch {
	case m.installer.Phase == InstallerFailed:
		k.add(Finding{ID: CheckMemberConfig, Status: DiagFail, Subject: subj, Summary: "ks-installer's last run failed on the member", Evidence: []string{m.installer.Describe()},
			Fix: &Fix{Action: "read the installer's logs", Kubectl: strings.Fields(strings.TrimPrefix(InstallerLogsCommand(m.c.Context), "kubectl "))}})
	case m.cc != nil && m.cfg != nil && len(ConfigDrift(m.cc, m.cfg)) > 0:
		k.add(Finding{ID: CheckMemberConfig, Status: DiagWarn, Subject: subj, Summary: "kubesphere-config is not rendered from the ClusterConfiguration yet (installer running?)", Evidence: ConfigDrift(m.cc, m.cfg),
			Fix: &Fix{Action: "wait for ks-installer", Kubectl: strings.Fields(strings.TrimPrefix(InstallerLogsCommand(m.c.Context), "kubectl "))}})
	case m.cfg != nil:
		k.add(Finding{ID: CheckMemberConfig, Status: DiagOK, Subject: subj, Summary: "kubesphere-config rendered from the ClusterConfiguration"})
	}
	switch {
	case m.cfgErr != nil:
		k.add(Finding{ID: CheckMemberJWT, Status: DiagFail, Subject: subj, Summary: "cannot read the member's kubesphere-config", Evidence: []string{errText(m.cfgErr)}})
	case k.h.cfg == nil:
		k.add(Finding{ID: CheckMemberJWT, Status: DiagSkip, Subject: subj, Summary: "the host's kubesphere-config is unreadable"})
	case !digestEqual(m.cfg.Authentication.JWTSecret, k.h.cfg.Authentication.JWTSecret):
		k.add(Finding{ID: CheckMemberJWT, Status: DiagFail, Subject: subj, Summary: "jwtSecret differs from the host's (console: \"session timeout\", \"signature is invalid\")",
			Evidence: []string{"SHA-256 digests of the two jwtSecrets differ (neither is shown)"},
			Fix:      withSetting(join("re-run join, which copies the host's jwtSecret"), cc+" spec.authentication.jwtSecret")})
	default:
		k.add(Finding{ID: CheckMemberJWT, Status: DiagOK, Subject: subj, Summary: "jwtSecret equals the host's (digests match)"})
	}
	if m.cfg != nil {
		d, err := m.cfg.AccessTokenMaxAgeDuration()
		switch {
		case err != nil:
			k.add(Finding{ID: CheckMemberTokenAge, Status: DiagFail, Subject: subj, Summary: "accessTokenMaxAge does not parse", Evidence: []string{err.Error()}})
		case d != 0:
			k.add(Finding{ID: CheckMemberTokenAge, Status: DiagFail, Subject: subj, Summary: "accessTokenMaxAge is " + d.String() + ", not 0 (console: \"token not found in cache\")",
				Fix: withSetting(join("set it to 0 in the member's ClusterConfiguration, which ks-installer renders into kubesphere-config (join does this); "+
					"if the ClusterConfiguration already says 0, kubesphere-config was edited by hand: set it back to 0 there"), cc+" spec.authentication.oauthOptions.accessTokenMaxAge: 0")})
		default:
			k.add(Finding{ID: CheckMemberTokenAge, Status: DiagOK, Subject: subj, Summary: "accessTokenMaxAge 0"})
		}
	}
}

func (k *checker) memberClockCheck(m *memberData, subj string) {
	limit := 10 * time.Second
	if k.h.cfg != nil {
		if d, err := k.h.cfg.MaximumClockSkewDuration(); err == nil {
			limit = d
		}
	}
	switch {
	case m.clockErr != nil || k.h.clockErr != nil:
		k.add(Finding{ID: CheckMemberClock, Status: DiagSkip, Subject: subj, Summary: "clock skew not measured", Evidence: []string{errText(m.clockErr) + errText(k.h.clockErr)}})
	default:
		skew := m.clock - k.h.clock
		if skew < 0 {
			skew = -skew
		}
		ev := []string{fmt.Sprintf("Date headers of the two apiservers differ by %s (maximumClockSkew %s)", skew.Round(100*time.Millisecond), limit)}
		if skew > limit {
			k.add(Finding{ID: CheckMemberClock, Status: DiagFail, Subject: subj, Summary: "the member's clock is off the host's by more than maximumClockSkew", Evidence: ev,
				Fix: &Fix{Action: "synchronise the nodes' clocks (NTP/chrony) on both clusters"}})
		} else {
			k.add(Finding{ID: CheckMemberClock, Status: DiagOK, Subject: subj, Summary: "clock skew within maximumClockSkew", Evidence: ev})
		}
	}
}

func (k *checker) memberUIDCheck(m *memberData, subj string, cl *unstructured.Unstructured) {
	want := ClusterMemberUID(cl)
	switch {
	case m.uidErr != nil:
		k.add(Finding{ID: CheckMemberUID, Status: DiagFail, Subject: subj, Summary: "cannot read kube-system", Evidence: []string{errText(m.uidErr)}})
	case want != "" && want != m.uid:
		args := append([]string{"unjoin", "--name", m.cluster}, k.hostFlag...)
		k.add(Finding{ID: CheckMemberUID, Status: DiagFail, Subject: subj, Summary: "the member was reinstalled: kube-system UID " + m.uid + ", the Cluster is bound to " + want,
			Evidence: []string{"matched by " + m.matchedBy},
			Fix:      &Fix{Action: "remove the Cluster bound to the old cluster (unjoin --force), then join again", KsMc: append(args, "--force")}})
	default:
		k.add(Finding{ID: CheckMemberUID, Status: DiagOK, Subject: subj, Summary: "kube-system UID equals the Cluster's status.uid"})
	}
}

func (k *checker) memberAgentCheck(m *memberData, subj string, cl *unstructured.Unstructured) {
	join := func(action string) *Fix { return k.joinFix(m, action) }
	switch {
	case m.agentErr != nil:
		k.add(Finding{ID: CheckMemberAgent, Status: DiagFail, Subject: subj, Summary: "cannot read the agent Deployment", Evidence: []string{errText(m.agentErr)}})
	case m.agent == nil:
		if connectionType(cl) == "proxy" {
			k.add(Finding{ID: CheckMemberAgent, Status: DiagFail, Subject: subj, Summary: "no agent Deployment kubesphere-system/cluster-agent", Fix: join("re-run join, which renders the agent")})
		}
	default:
		info := InspectAgent(m.agent)
		if probs := k.agentProblems(m, cl); len(probs) > 0 {
			k.add(Finding{ID: CheckMemberAgent, Status: DiagFail, Subject: subj, Summary: probs[0], Evidence: probs,
				Fix: join("re-run join, which re-renders the agent with the Cluster's name, token and the host's address")})
		} else {
			k.add(Finding{ID: CheckMemberAgent, Status: DiagOK, Subject: subj, Summary: fmt.Sprintf("agent (%s) for %s dials %s with the Cluster's token", info.Tunnel, info.ClusterName, info.ProxyServer)})
		}
		k.agentPodsCheck(m, subj)
	}
}

func (k *checker) agentPodsCheck(m *memberData, subj string) {
	ctxArgs := hostCtxArgs(m.c)
	probs, restarts, crash := podProblems(m.pods)
	var logs []string
	names := make([]string, 0, len(m.logs))
	for n := range m.logs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		logs = append(logs, m.logs[n])
	}
	cause, see := agentLogCause(strings.Join(logs, "\n"))
	ev := append([]string{}, probs...)
	if restarts > 0 {
		ev = append(ev, fmt.Sprintf("%d restarts", restarts))
	}
	if m.podsErr != nil {
		ev = append(ev, "cannot list the agent pods: "+errText(m.podsErr))
	}
	switch {
	case crash || (len(probs) > 0 && replicas(m.agent) > 0):
		f := Finding{ID: CheckMemberAgentPods, Status: DiagFail, Subject: subj, Summary: "agent pods not running", Evidence: ev}
		if cause != "" {
			f.Summary += ": " + cause
			f.Fix = &Fix{Action: "fix " + see + " first", See: see}
		} else {
			f.Fix = &Fix{Action: "read the agent's logs", Kubectl: append([]string{"-n", kubesphere.Namespace, "logs", "deployment/" + kubesphere.AgentName}, ctxArgs...)}
		}
		k.add(f)
	case restarts > 3:
		k.add(Finding{ID: CheckMemberAgentPods, Status: DiagWarn, Subject: subj, Summary: "the agent restarts often" + suffix(cause), Evidence: ev})
	default:
		k.add(Finding{ID: CheckMemberAgentPods, Status: DiagOK, Subject: subj, Summary: fmt.Sprintf("%d agent pod(s), %d restarts", len(m.pods), restarts), Evidence: ev})
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func withSetting(f *Fix, setting string) *Fix {
	f.Setting = setting
	return f
}
