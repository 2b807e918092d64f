//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ks-mc/ks-mc/test/sandbox"
)

// TestBenchDiagnose measures diagnose on 1 host + N members (default 10) joined with --tunnel=ks-mc.
// It is a benchmark, not an assertion: it only runs with KSMC_BENCH_DIAGNOSE=1 (make bench-diagnose)
// and reports the wall time of each run (the target: <= 10 s for 10 members).
func TestBenchDiagnose(t *testing.T) {
	if os.Getenv("KSMC_BENCH_DIAGNOSE") != "1" {
		t.Skip("benchmark: run with KSMC_BENCH_DIAGNOSE=1 (make bench-diagnose)")
	}
	n := 10
	if v, err := strconv.Atoi(os.Getenv("KSMC_BENCH_MEMBERS")); err == nil && v > 0 {
		n = v
	}
	names := []string{"host"}
	for i := 1; i <= n; i++ {
		names = append(names, fmt.Sprintf("member%d", i))
	}
	s := newSandbox(t, sandbox.Options{Clusters: names})
	host := s.Cluster("host")
	if r := ksmc(t, s, "init-host", "--context", "host", "--tunnel=ks-mc", "--proxy-publish-address", "https://"+host.NodeIP+":8080", "--timeout", "10m"); r.code != 0 {
		t.Fatalf("init-host: %s", r)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 3)
	errs := make(chan string, n)
	for _, m := range names[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if r := ksmc(t, s, "join", "--context", m, "--host-context", "host", "--timeout", "15m"); r.code != 0 {
				errs <- m + ": " + r.String()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("join %s", e)
	}
	var times []time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		r := ksmc(t, s, "diagnose", "--host-context", "host", "--all-contexts", "-o", "json")
		d := time.Since(start)
		times = append(times, d)
		t.Logf("run %d: exit %d in %s", i+1, r.code, d.Round(time.Millisecond))
		if r.code != 0 {
			t.Logf("%s", r)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	msg := fmt.Sprintf("diagnose, 1 host + %d members (ks-mc tunnel), %d runs: min %s, median %s, max %s\n",
		n, len(times), times[0].Round(time.Millisecond), times[len(times)/2].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
	t.Log(msg)
	if out := os.Getenv("KSMC_BENCH_OUT"); out != "" {
		_ = os.WriteFile(out, []byte(msg), 0o644)
	}
}
