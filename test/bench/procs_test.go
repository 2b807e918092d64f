package main

import (
	"os"
	"testing"
	"time"
)

// TestCPUOfIsPrecise: the process CPU clock counts what /proc/<pid>/stat counts, in nanoseconds,
// so a few milliseconds of work show up as such and not as 0 or 10 ms.
func TestCPUOfIsPrecise(t *testing.T) {
	pid := os.Getpid()
	c0, err := procClock(pid)
	if err != nil {
		t.Skipf("no process cpu clock here: %v", err)
	}
	spin := func(d time.Duration) {
		for start := time.Now(); time.Since(start) < d; {
		}
	}
	spin(3 * time.Millisecond)
	c1, _ := procClock(pid)
	if d := c1 - c0; d < 2*time.Millisecond || d > 50*time.Millisecond {
		t.Fatalf("3 ms of spinning counted as %v", d)
	}
	spin(200 * time.Millisecond)
	clk, err := cpuOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	stat, err := cpuOfStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if diff := clk - stat; diff < -20*time.Millisecond || diff > 20*time.Millisecond { // stat truncates to 10 ms ticks
		t.Fatalf("cpu clock %v, /proc/<pid>/stat %v", clk, stat)
	}
}
