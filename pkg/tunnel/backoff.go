package tunnel

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"syscall"
	"time"
)

// Backoff is a full-jitter exponential backoff: the n-th wait is uniform in
// [0, min(Max, Initial·2ⁿ)]. A session that stayed up for ResetAfter resets it.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	ResetAfter time.Duration
	// MaxRefused caps the wait after an attempt whose TCP connection was refused: the proxy's
	// address answers but nothing listens (a proxy restarting, a Service without endpoints). Such
	// attempts cost the proxy nothing, and a short cap brings every agent back within about that
	// long after the proxy returns. 0 disables it.
	MaxRefused time.Duration
}

// DefaultBackoff starts at 100ms, caps at 15s and resets after a session lived 10s.
func DefaultBackoff() Backoff {
	return Backoff{Initial: 100 * time.Millisecond, Max: 15 * time.Second, ResetAfter: 10 * time.Second, MaxRefused: time.Second}
}

// Validate reports an unusable backoff.
func (b Backoff) Validate() error {
	if b.Initial <= 0 || b.Max < b.Initial || b.ResetAfter < 0 || b.MaxRefused < 0 {
		return fmt.Errorf("%w: backoff needs 0 < initial <= max and reset-after >= 0", ErrInvalidConfig)
	}
	return nil
}

// ceiling is the upper bound of the attempt-th wait (attempt counts from 0).
func (b Backoff) ceiling(attempt int) time.Duration {
	d := b.Initial
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Duration returns the wait before retry number attempt (0-based): full jitter.
func (b Backoff) Duration(attempt int) time.Duration {
	c := b.ceiling(attempt)
	return time.Duration(rand.Int64N(int64(c) + 1))
}

// DurationAfter is Duration, capped by MaxRefused when err is a refused TCP connection.
func (b Backoff) DurationAfter(attempt int, err error) time.Duration {
	if b.MaxRefused > 0 && errors.Is(err, syscall.ECONNREFUSED) {
		c := min(b.ceiling(attempt), b.MaxRefused)
		return time.Duration(rand.Int64N(int64(c) + 1))
	}
	return b.Duration(attempt)
}
