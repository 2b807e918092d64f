package tunnel

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// failureLimiter limits failed agent authentications per key (remote IP and cluster): each
// failure takes a token from the key's bucket; a key with an empty bucket is answered 429 without
// its token being checked.
// Successful attempts cost nothing, so a legitimate agent is never slowed down by its own
// reconnects.
type failureLimiter struct {
	mu    sync.Mutex
	r     rate.Limit
	burst int
	ips   map[string]*limiterEntry
}

type limiterEntry struct {
	l    *rate.Limiter
	seen time.Time
}

const maxLimiterEntries = 10000

func newFailureLimiter(r rate.Limit, burst int) *failureLimiter {
	return &failureLimiter{r: r, burst: burst, ips: map[string]*limiterEntry{}}
}

func (f *failureLimiter) allowed(ip string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.ips[ip]
	if e == nil {
		return true
	}
	return e.l.Tokens() >= 1
}

func (f *failureLimiter) fail(ip string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	e := f.ips[ip]
	if e == nil {
		if len(f.ips) >= maxLimiterEntries {
			// Forget buckets that have refilled: they hold no state worth keeping.
			for k, v := range f.ips {
				if v.l.TokensAt(now) >= float64(f.burst) {
					delete(f.ips, k)
				}
			}
		}
		e = &limiterEntry{l: rate.NewLimiter(f.r, f.burst)}
		f.ips[ip] = e
	}
	e.seen = now
	e.l.AllowN(now, 1)
}
