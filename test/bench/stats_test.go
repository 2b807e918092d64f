package main

import (
	"math"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3, 1, 2}, 2}, {[]float64{5}, 5}, {[]float64{4, 1, 3, 2}, 2}, {[]float64{9.5, 0.2, 7}, 7}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Error("median sorted its input")
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(101-i)*time.Millisecond)
	}
	if p := percentile(ds, 0.5); p != 50*time.Millisecond {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(ds, 0.99); p != 99*time.Millisecond {
		t.Errorf("p99 = %v", p)
	}
	if p := percentile(ds, 1); p != 100*time.Millisecond {
		t.Errorf("p100 = %v", p)
	}
	if p := percentile(ds[:1], 0.99); p != 100*time.Millisecond {
		t.Errorf("p99 of one = %v", p)
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing")
	}
}

func TestPairedOrder(t *testing.T) {
	flip := false
	order := pairedOrder(50, func() bool { flip = !flip; return flip })
	if len(order) != 100 {
		t.Fatalf("%d labels", len(order))
	}
	for i := 0; i < len(order); i += 2 {
		if order[i]+order[i+1] != 1 {
			t.Fatalf("pair %d is %v", i/2, order[i:i+2])
		}
	}
	if order[0] != 0 || order[2] != 1 {
		t.Errorf("the coin does not pick the order: %v", order[:4])
	}
}

func TestAddedLatency(t *testing.T) {
	var d, tu []time.Duration
	for i := 0; i < 100; i++ {
		d = append(d, time.Millisecond)
		tu = append(tu, time.Millisecond+200*time.Microsecond)
	}
	tu[99] = 10 * time.Millisecond
	a := addedLatency(d, tu)
	if a.p50 != 200*time.Microsecond {
		t.Errorf("added p50 %v", a.p50)
	}
	if a.p99 != 200*time.Microsecond {
		t.Errorf("added p99 %v (one outlier of 100 is above p99)", a.p99)
	}
}

func TestProcCPU(t *testing.T) {
	// A command name with a space and a parenthesis, as /proc prints it.
	stat := "4242 (kube apiserver)) S 1 4242 4242 0 -1 4194560 51234 0 12 0 1500 250 0 0 20 0 12 0 5000 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
	got, err := procCPU(stat)
	if err != nil || got != 1750 {
		t.Fatalf("procCPU = %d, %v; want 1750", got, err)
	}
	if _, err := procCPU("4242 (x) S 1 2"); err == nil {
		t.Error("a short stat line parsed")
	}
	if _, err := procCPU("garbage"); err == nil {
		t.Error("a line without a name parsed")
	}
}

func TestProcMem(t *testing.T) {
	status := "Name:\tkubectl-ks_mc\nVmPeak:\t  900000 kB\nVmHWM:\t   61234 kB\nVmRSS:\t   50000 kB\nThreads:\t9\n"
	rss, hwm, err := procMem(status)
	if err != nil || rss != 50000 || hwm != 61234 {
		t.Fatalf("procMem = %d, %d, %v", rss, hwm, err)
	}
	if _, _, err := procMem("Name:\tx\nVmRSS:\t 12 kB\n"); err == nil {
		t.Error("status without VmHWM parsed")
	}
	if _, _, err := procMem("VmRSS:\t 12 MB\nVmHWM:\t 12 kB\n"); err == nil {
		t.Error("a unit other than kB parsed")
	}
}

func TestMetricValue(t *testing.T) {
	text := "# HELP go_gc_heap_live_bytes x\n# TYPE go_gc_heap_live_bytes gauge\ngo_gc_heap_live_bytes 1.2345e+06\nksmc_proxy_agents{cluster=\"a\"} 1\ngo_goroutines 42\n"
	if v, ok := metricValue(text, "go_gc_heap_live_bytes"); !ok || v != 1234500 {
		t.Errorf("heap %v %v", v, ok)
	}
	if v, ok := metricValue(text, "go_goroutines"); !ok || v != 42 {
		t.Errorf("goroutines %v %v", v, ok)
	}
	if _, ok := metricValue(text, "go_gc_heap"); ok {
		t.Error("a prefix matched")
	}
}

func TestGoal(t *testing.T) {
	if !(goal{op: "≥", limit: 0.8}).met(0.8) || (goal{op: "≥", limit: 0.8}).met(0.79) {
		t.Error("≥")
	}
	if !(goal{op: "≤", limit: 1.3}).met(1.3) || (goal{op: "≤", limit: 1.3}).met(1.31) {
		t.Error("≤")
	}
	if (goal{op: "≤", limit: 1}).met(math.NaN()) {
		t.Error("NaN met a goal")
	}
	if s := (goal{op: "≤", limit: 0.5, unit: " s"}).String(); s != "≤ 0.5 s" {
		t.Errorf("String %q", s)
	}
}

func TestProcKiB(t *testing.T) {
	st := "Name:\tx\nVmRSS:\t  2048 kB\nRssAnon:\t  1500 kB\nRssFile:\t   500 kB\nBad:\t12\n"
	if got := procKiB(st, "RssAnon"); got != 1500 {
		t.Fatalf("RssAnon = %d", got)
	}
	if got := procKiB(st, "RssFile"); got != 500 {
		t.Fatalf("RssFile = %d", got)
	}
	if procKiB(st, "Bad") != 0 || procKiB(st, "Missing") != 0 {
		t.Fatal("a malformed or missing field must read 0")
	}
}
