package tunnel

import (
	"io"
	"net/http"
)

// ReadyPath is the proxy's readiness endpoint. Unlike /health (liveness, and Tower's 200 "OK"),
// it answers 503 while the replica is on standby (not the Lease holder, or its Cluster cache not
// synced yet) or draining: a standby has no per-cluster listener, so the pod must not be an
// endpoint of the tower and mc-<name> Services (they select app=tower on every replica).
const ReadyPath = "/readyz"

// Ready reports whether this replica serves agents and per-cluster listeners.
func (p *Proxy) Ready() bool { return !p.standby.Load() && !p.draining.Load() }

func (p *Proxy) serveReady(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !p.Ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "standby\n")
		return
	}
	_, _ = io.WriteString(w, "OK\n")
}
