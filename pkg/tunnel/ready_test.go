package tunnel

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// A standby replica (--leader-elect, or a cache not synced yet) must fail readiness so that the
// tower and mc-<name> Services never send a connection to it; liveness (/health) stays 200.
func TestStandbyFailsReadiness(t *testing.T) {
	pc := DefaultProxyConfig()
	pc.Authenticator, pc.AllowPlaintextAgents = refuseAll{}, true
	p, err := NewProxy(pc)
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) int {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	p.SetStandby(true)
	if c := get(ReadyPath); c != http.StatusServiceUnavailable {
		t.Fatalf("standby: %s = %d, want 503", ReadyPath, c)
	}
	if c := get("/health"); c != http.StatusOK {
		t.Fatalf("standby: /health = %d, want 200 (liveness)", c)
	}
	p.SetStandby(false)
	if c := get(ReadyPath); c != http.StatusOK {
		t.Fatalf("leader: %s = %d, want 200", ReadyPath, c)
	}
}

type refuseAll struct{}

func (refuseAll) Authenticate(string, string) error { return ErrUnauthorized }
