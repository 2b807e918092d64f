package main

import (
	"bufio"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Pure helpers of the bench (statistics, /proc and Prometheus text parsing, goals); stats_test.go
// covers them.

// median of xs (the lower middle for an even count); NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[(len(s)-1)/2]
}

// percentile is the nearest-rank percentile (p in [0,1]) of ds; 0 for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pairedOrder returns 2n labels, n of each of a and b, in an order where every consecutive pair
// holds one a and one b in a random order: the two series see the same moments of machine load.
func pairedOrder(n int, coin func() bool) []int {
	out := make([]int, 0, 2*n)
	for i := 0; i < n; i++ {
		if coin() {
			out = append(out, 0, 1)
		} else {
			out = append(out, 1, 0)
		}
	}
	return out
}

// added is what a paired series says the tunnel adds: p50 and p99 of the tunnel series minus
// those of the direct series.
type added struct{ p50, p99 time.Duration }

func addedLatency(direct, tunnel []time.Duration) added {
	return added{p50: percentile(tunnel, 0.5) - percentile(direct, 0.5), p99: percentile(tunnel, 0.99) - percentile(direct, 0.99)}
}

// procCPU parses /proc/<pid>/stat: utime + stime in clock ticks. The command name (field 2) may
// hold spaces and parentheses, so fields are counted after its last ')'.
func procCPU(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	// After the name: state(3) ppid(4) … utime(14) stime(15): indexes 11 and 12 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc stat: %d fields", len(f))
	}
	u, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat utime: %w", err)
	}
	s, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat stime: %w", err)
	}
	return u + s, nil
}

// procMem parses VmRSS and VmHWM (KiB) from /proc/<pid>/status.
func procMem(status string) (rss, hwm uint64, err error) {
	sc := bufio.NewScanner(strings.NewReader(status))
	found := 0
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("parse /proc status %s: %q", k, v)
		}
		n, perr := strconv.ParseUint(f[0], 10, 64)
		if perr != nil {
			return 0, 0, fmt.Errorf("parse /proc status %s: %w", k, perr)
		}
		if k == "VmRSS" {
			rss = n
		} else {
			hwm = n
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("parse /proc status: VmRSS/VmHWM missing")
	}
	return rss, hwm, nil
}

// metricValue returns the value of an unlabelled sample name in Prometheus text format.
func metricValue(text, name string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// goal is a figure's target: value op limit.
type goal struct {
	op    string // "≥" or "≤"
	limit float64
	unit  string // printed after the limit ("×", " ms", ...)
}

func (g goal) met(v float64) bool {
	if math.IsNaN(v) {
		return false
	}
	if g.op == "≥" {
		return v >= g.limit
	}
	return v <= g.limit
}

func (g goal) String() string { return fmt.Sprintf("%s %s%s", g.op, trimFloat(g.limit), g.unit) }

func trimFloat(v float64) string {
	s := strconv.FormatFloat(v, 'f', 2, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// procKiB is one "Key:   N kB" field of /proc/<pid>/status (RssAnon, RssFile, ...), 0 when absent.
func procKiB(status, key string) uint64 {
	sc := bufio.NewScanner(strings.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0
		}
		n, _ := strconv.ParseUint(f[0], 10, 64)
		return n
	}
	return 0
}
