package tunnel

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
)

// proxyMetrics are exported on /metrics in the Prometheus text format.
type proxyMetrics struct {
	sessionsTotal       atomic.Int64
	streamsTotal        atomic.Int64
	streamsOpen         atomic.Int64
	refusedAgentStreams atomic.Int64
	authFailures        labeledCounter
	streamLimited       labeledCounter // by scope: session, cluster, agent
	revokedSessions     labeledCounter // by reason
	protoSessions       labeledCounter // sessions accepted, by protocol
	protoStreams        labeledCounter // streams opened, by protocol
	targetStreams       labeledCounter // ks-mc streams opened, by target (kubernetes-h2: relayed connections)
	towerDropped        atomic.Int64   // Tower sessions dropped by the proxy's keepalive
}

type labeledCounter struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *labeledCounter) add(label string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int64{}
	}
	c.m[label]++
}

func (c *labeledCounter) get(label string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[label]
}

func (c *labeledCounter) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// write writes the counter in the Prometheus text format: HELP, TYPE counter, then one sample
// per label value in sorted order.
func (c *labeledCounter) write(w io.Writer, name, help, label string) {
	fmt.Fprintf(w, "# HELP %s %s\n", name, help)
	fmt.Fprintf(w, "# TYPE %s counter\n", name)
	snap := c.snapshot()
	for _, k := range sortedKeys(snap) {
		fmt.Fprintf(w, "%s{%s=%q} %d\n", name, label, k, snap[k])
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (m *proxyMetrics) write(w io.Writer, agents, towers map[string]int) {
	total := make(map[string]int, len(agents)+len(towers))
	for k, n := range agents {
		total[k] += n
	}
	for k, n := range towers {
		total[k] += n
	}
	fmt.Fprintln(w, "# HELP ksmc_proxy_agents Connected agent sessions per cluster (both protocols).")
	fmt.Fprintln(w, "# TYPE ksmc_proxy_agents gauge")
	for _, k := range sortedKeys(total) {
		fmt.Fprintf(w, "ksmc_proxy_agents{cluster=%q} %d\n", k, total[k])
	}
	fmt.Fprintln(w, "# HELP ksmc_proxy_agent_sessions Connected agent sessions per cluster and protocol (ks-mc, tower).")
	fmt.Fprintln(w, "# TYPE ksmc_proxy_agent_sessions gauge")
	for _, k := range sortedKeys(total) {
		for _, pr := range []struct {
			name string
			m    map[string]int
		}{{ProtocolKsMC, agents}, {ProtocolTower, towers}} {
			if n := pr.m[k]; n > 0 {
				fmt.Fprintf(w, "ksmc_proxy_agent_sessions{cluster=%q,protocol=%q} %d\n", k, pr.name, n)
			}
		}
	}
	m.protoSessions.write(w, "ksmc_proxy_protocol_sessions_total", "Agent sessions accepted, by protocol.", "protocol")
	m.protoStreams.write(w, "ksmc_proxy_protocol_streams_total", "Streams opened to agents, by protocol.", "protocol")
	m.targetStreams.write(w, "ksmc_proxy_target_streams_total", "Streams opened to ks-mc agents, by target (kubernetes-h2: an HTTP/2 client's connection relayed whole).", "target")
	fmt.Fprintln(w, "# HELP ksmc_proxy_tower_keepalive_dropped_total Tower agent sessions dropped because the proxy's keepalive went unanswered.")
	fmt.Fprintln(w, "# TYPE ksmc_proxy_tower_keepalive_dropped_total counter")
	fmt.Fprintf(w, "ksmc_proxy_tower_keepalive_dropped_total %d\n", m.towerDropped.Load())
	fmt.Fprintln(w, "# HELP ksmc_proxy_sessions_total Agent sessions accepted.")
	fmt.Fprintln(w, "# TYPE ksmc_proxy_sessions_total counter")
	fmt.Fprintf(w, "ksmc_proxy_sessions_total %d\n", m.sessionsTotal.Load())
	fmt.Fprintln(w, "# HELP ksmc_proxy_streams_total Streams opened to agents.")
	fmt.Fprintln(w, "# TYPE ksmc_proxy_streams_total counter")
	fmt.Fprintf(w, "ksmc_proxy_streams_total %d\n", m.streamsTotal.Load())
	fmt.Fprintln(w, "# HELP ksmc_proxy_streams_open Streams currently open to agents.")
	fmt.Fprintln(w, "# TYPE ksmc_proxy_streams_open gauge")
	fmt.Fprintf(w, "ksmc_proxy_streams_open %d\n", m.streamsOpen.Load())
	fmt.Fprintln(w, "# HELP ksmc_proxy_refused_agent_streams_total Streams opened by agents and refused.")
	fmt.Fprintln(w, "# TYPE ksmc_proxy_refused_agent_streams_total counter")
	fmt.Fprintf(w, "ksmc_proxy_refused_agent_streams_total %d\n", m.refusedAgentStreams.Load())
	m.authFailures.write(w, "ksmc_proxy_auth_failures_total", "Refused agent connections by reason.", "reason")
	m.streamLimited.write(w, "ksmc_proxy_stream_limit_total", "Streams refused because a cap of open streams was reached, by scope.", "scope")
	m.revokedSessions.write(w, "ksmc_proxy_revoked_sessions_total", "Agent sessions closed because their Cluster's token or UID changed, by reason.", "reason")
}
