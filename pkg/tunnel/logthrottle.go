package tunnel

import (
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// logThrottle lets through at most one line per second and counts the lines it dropped, so a
// flood of hostile requests cannot flood the log.
type logThrottle struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (t *logThrottle) log(l logr.Logger, msg string, kv ...any) {
	t.mu.Lock()
	now := time.Now()
	if now.Sub(t.last) < time.Second {
		t.dropped++
		t.mu.Unlock()
		return
	}
	t.last = now
	dropped := t.dropped
	t.dropped = 0
	t.mu.Unlock()
	l.Info(msg, append(kv, "suppressedSinceLast", dropped)...)
}
