package installer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// InstallerPhase is what ks-installer appears to be doing.
type InstallerPhase string

const (
	// InstallerIdle: the last run finished ("Welcome to KubeSphere!").
	InstallerIdle InstallerPhase = "idle"
	// InstallerRunning: a run started and has not finished.
	InstallerRunning InstallerPhase = "running"
	// InstallerFailed: the last run stopped at a failed task.
	InstallerFailed InstallerPhase = "failed"
	// InstallerUnknown: no pod or no readable logs.
	InstallerUnknown InstallerPhase = "unknown"
)

// InstallerState is the observed state of ks-installer.
type InstallerState struct {
	Phase InstallerPhase
	// Task is the failed task (Failed) or the task in progress (Running), when the logs name it.
	Task string
	// Pod describes the installer pod ("ks-installer-xyz Running, ready").
	Pod string
	// FailureLine is the log line reporting the failure (Failed only; may hold task output, never
	// a secret from ks-mc, but print it as the installer's own words).
	FailureLine string
	// RunStarted: the text read shows the start of the run that reached this phase (a failure
	// without it may be left over from an earlier run).
	RunStarted bool
}

// Describe renders the state for progress and error messages.
func (s InstallerState) Describe() string {
	var b strings.Builder
	b.WriteString("ks-installer ")
	b.WriteString(string(s.Phase))
	if s.Task != "" {
		b.WriteString(" (task " + s.Task + ")")
	}
	if s.Pod != "" {
		b.WriteString("; pod " + s.Pod)
	}
	return b.String()
}

// InstallerLogsCommand is the exact command that shows the installer's logs.
func InstallerLogsCommand(context string) string {
	cmd := "kubectl logs -n " + kubesphere.Namespace + " -l " + kubesphere.InstallerSelector
	if context != "" {
		cmd += " --context " + context
	}
	return cmd
}

var (
	reStart   = regexp.MustCompile(`Start installing\s*(\S*)`)
	reTask    = regexp.MustCompile(`task (\S+) status is (\S+)`)
	reFailed  = regexp.MustCompile(`Task '([^']+)' failed`)
	reWelcome = regexp.MustCompile(`Welcome to KubeSphere!`)
)

// ParseInstallerLog reads ks-installer log text and returns the phase of the latest run:
// "Start installing <task>" / "task <name> status is <status> (i/N)" → running, "Task '<name>' failed:"
// → failed, the "Welcome to KubeSphere!" banner → idle. Text without markers is unknown.
func ParseInstallerLog(text string) InstallerState {
	st := InstallerState{Phase: InstallerUnknown}
	started := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case reFailed.MatchString(line):
			st = InstallerState{Phase: InstallerFailed, Task: reFailed.FindStringSubmatch(line)[1], FailureLine: strings.TrimSpace(line), RunStarted: started}
			started = false
		case reWelcome.MatchString(line):
			st = InstallerState{Phase: InstallerIdle, RunStarted: started}
			started = false
		case reStart.MatchString(line):
			task := reStart.FindStringSubmatch(line)[1]
			if strings.HasPrefix(task, "(") {
				task = ""
			}
			started = true
			st = InstallerState{Phase: InstallerRunning, Task: task, RunStarted: true}
		case reTask.MatchString(line):
			m := reTask.FindStringSubmatch(line)
			if m[2] == "failed" {
				st = InstallerState{Phase: InstallerFailed, Task: m[1], FailureLine: strings.TrimSpace(line), RunStarted: started}
				started = false
			} else {
				started = true
				st = InstallerState{Phase: InstallerRunning, Task: m[1], RunStarted: true}
			}
		}
	}
	return st
}

// GetInstallerState looks at the ks-installer pod and the tail of its logs (only lines after since,
// when since is not zero). Unreadable logs give InstallerUnknown, not an error: pod logs may be
// unavailable (RBAC, no kubelet) and the caller then relies on ConfigDrift.
func GetInstallerState(ctx context.Context, c *Clients, since time.Time) (InstallerState, error) {
	pods, err := c.Kube.CoreV1().Pods(kubesphere.Namespace).List(ctx, metav1.ListOptions{LabelSelector: kubesphere.InstallerSelector})
	if err != nil {
		return InstallerState{Phase: InstallerUnknown}, fmt.Errorf("list ks-installer pods: %w", err)
	}
	if len(pods.Items) == 0 {
		return InstallerState{Phase: InstallerUnknown, Pod: "none found"}, nil
	}
	pod := newestPod(pods.Items)
	podDesc := describePod(pod)
	tail := int64(300)
	opts := &corev1.PodLogOptions{TailLines: &tail}
	if !since.IsZero() {
		t := metav1.NewTime(since)
		opts.SinceTime = &t
	}
	raw, err := podLogs(ctx, c, pod.Name, opts)
	if err != nil {
		return InstallerState{Phase: InstallerUnknown, Pod: podDesc}, nil
	}
	st := ParseInstallerLog(string(raw))
	st.Pod = podDesc
	return st, nil
}

// podLogs reads a pod's logs in kubesphere-system (a variable so tests can supply log text: the
// fake clientset always answers "fake logs").
var podLogs = func(ctx context.Context, c *Clients, pod string, opts *corev1.PodLogOptions) ([]byte, error) {
	// The kubelet may be slow or unreachable from the apiserver: logs are a hint, never a wait.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.Kube.CoreV1().Pods(kubesphere.Namespace).GetLogs(pod, opts).Do(ctx).Raw()
}

func newestPod(pods []corev1.Pod) *corev1.Pod {
	best := &pods[0]
	for i := range pods {
		if pods[i].CreationTimestamp.After(best.CreationTimestamp.Time) {
			best = &pods[i]
		}
	}
	return best
}

func describePod(p *corev1.Pod) string {
	s := p.Name + " " + string(p.Status.Phase)
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			s += ", " + w.Reason
		}
		if cs.RestartCount > 0 {
			s += fmt.Sprintf(", %d restarts", cs.RestartCount)
		}
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			if cond.Status == corev1.ConditionTrue {
				s += ", ready"
			} else {
				s += ", not ready"
			}
		}
	}
	return s
}

// ConfigDrift lists the settings of the ClusterConfiguration's spec that kubesphere-config does not
// reflect yet (ks-installer re-renders the ConfigMap on every run). A non-empty result right after a
// patch means the run is still going (or failed). Secret values are never included, only their names.
func ConfigDrift(cc *ClusterConfiguration, cfg *KubeSphereConfig) []string {
	var out []string
	if want, got := cc.ClusterRole(), cfg.Multicluster.ClusterRole; want != got && !(want == kubesphere.RoleNone && got == "") {
		out = append(out, fmt.Sprintf("multicluster.clusterRole is %q in kubesphere-config, %q in the ClusterConfiguration", got, want))
	}
	if want := cc.ProxyPublishAddress(); want != cfg.Multicluster.ProxyPublishAddress {
		out = append(out, fmt.Sprintf("multicluster.proxyPublishAddress is %q in kubesphere-config, %q in the ClusterConfiguration", cfg.Multicluster.ProxyPublishAddress, want))
	}
	if want := cc.JWTSecret(); !want.IsZero() && want != cfg.Authentication.JWTSecret {
		out = append(out, "authentication.jwtSecret differs between the ClusterConfiguration and kubesphere-config")
	}
	return out
}

// WaitOptions configure WaitForInstaller.
type WaitOptions struct {
	// What names the awaited result in messages ("the host settings").
	What string
	// Timeout bounds the wait (required); it is the value named in a timeout error.
	Timeout time.Duration
	// Deadline, when set, ends the wait instead of now+Timeout (an overall --timeout shared by
	// several waits).
	Deadline time.Time
	// Since is when the change that triggered the run was sent; installer logs before it are ignored.
	Since time.Time
	// Interval between polls (default 2s).
	Interval time.Duration
	// Done reports whether the wait is over and, when not, what it observed ("multicluster: pending").
	Done func(ctx context.Context) (done bool, observed string, err error)
}

// InstallerFailedError means ks-installer reported a failed task.
type InstallerFailedError struct {
	Task        string
	Line        string
	LogsCommand string
}

func (e *InstallerFailedError) Error() string {
	msg := fmt.Sprintf("ks-installer failed at task %q", e.Task)
	if e.Line != "" {
		msg += ": " + e.Line
	}
	return msg + "\nsee the installer's logs: " + e.LogsCommand
}

// InstallerTimeoutError means the run did not reach the awaited state in time.
type InstallerTimeoutError struct {
	What        string
	Timeout     time.Duration
	Observed    string
	Installer   string
	LogsCommand string
}

func (e *InstallerTimeoutError) Error() string {
	msg := fmt.Sprintf("timed out after %s waiting for ks-installer to apply %s", e.Timeout, e.What)
	if e.Observed != "" {
		msg += "\nlast observed: " + e.Observed
	}
	if e.Installer != "" {
		msg += "\ninstaller: " + e.Installer
	}
	return msg + "\nsee the installer's logs: " + e.LogsCommand + "\n(re-run with a larger --timeout if the installer is still working)"
}

// WaitForInstaller polls until opts.Done reports true, failing early when the installer's logs
// report a failed task after opts.Since, and with an *InstallerTimeoutError after opts.Timeout.
// Progress goes to rep.Progress.
func WaitForInstaller(ctx context.Context, c *Clients, opts WaitOptions, rep Reporter) error {
	rep = reporterOrNop(rep)
	if opts.Interval == 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.Timeout <= 0 {
		return errors.New("wait for ks-installer: timeout must be positive")
	}
	deadline := opts.Deadline
	if deadline.IsZero() {
		deadline = time.Now().Add(opts.Timeout)
	}
	logsCmd := InstallerLogsCommand(c.Context)
	var observed, installer string
	for {
		done, obs, err := opts.Done(ctx)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			obs = err.Error()
		}
		if done {
			return nil
		}
		observed = obs
		st, _ := GetInstallerState(ctx, c, opts.Since)
		installer = st.Describe()
		// Only a failure of a run that started after opts.Since counts: a clock skew between this
		// machine and the node could otherwise show an earlier run's failure.
		if st.Phase == InstallerFailed && st.RunStarted {
			return &InstallerFailedError{Task: st.Task, Line: st.FailureLine, LogsCommand: logsCmd}
		}
		left := time.Until(deadline).Round(time.Second)
		rep.Progress(fmt.Sprintf("waiting for ks-installer to apply %s: %s (%s left)", opts.What, observed, left))
		if left <= 0 {
			return &InstallerTimeoutError{What: opts.What, Timeout: opts.Timeout, Observed: observed, Installer: installer, LogsCommand: logsCmd}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(opts.Interval, time.Until(deadline)+10*time.Millisecond)):
		}
	}
}
