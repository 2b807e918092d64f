package tunnel

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/metrics"
)

// runtimeSamples are the Go runtime figures on /metrics (proxy and agent): memory per stream and
// per session is read from them (make bench's scale figures).
var runtimeSamples = []struct{ name, metric, help string }{
	{"go_gc_heap_live_bytes", "/gc/heap/live:bytes", "Heap memory occupied by live objects, as of the last GC."},
	{"go_gc_cycles_total", "/gc/cycles/total:gc-cycles", "Completed GC cycles."},
	{"go_memstats_heap_alloc_bytes", "/memory/classes/heap/objects:bytes", "Heap memory of live and not yet swept objects."},
	{"go_memstats_stack_inuse_bytes", "/memory/classes/heap/stacks:bytes", "Memory of goroutine stacks."},
	{"go_goroutines", "/sched/goroutines:goroutines", "Goroutines that exist."},
}

// WriteRuntimeMetrics writes the Go runtime samples in the Prometheus text format.
func WriteRuntimeMetrics(w io.Writer) {
	s := make([]metrics.Sample, len(runtimeSamples))
	for i, r := range runtimeSamples {
		s[i].Name = r.metric
	}
	metrics.Read(s)
	for i, r := range runtimeSamples {
		var v uint64
		if s[i].Value.Kind() == metrics.KindUint64 {
			v = s[i].Value.Uint64()
		}
		typ := "gauge"
		if r.name == "go_gc_cycles_total" {
			typ = "counter"
		}
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %d\n", r.name, r.help, r.name, typ, r.name, v)
	}
	fmt.Fprintf(w, "# HELP go_info Go version.\n# TYPE go_info gauge\ngo_info{version=%q} 1\n", runtime.Version())
}

// RuntimeMetricsHandler serves WriteRuntimeMetrics (the agent's --metrics-bind-address).
func RuntimeMetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		WriteRuntimeMetrics(w)
	})
}
