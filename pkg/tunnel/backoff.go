package tunnel

import (
	"errors"
	"fmt"
	"io"
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
	// MaxRefused caps the wait after an attempt that failed because the proxy is not up yet (see
	// ProxyNotUp): the connection was refused (nothing listens: a proxy restarting, a Service
	// without endpoints), reset or closed before the proxy answered (a pod going away, a load
	// balancer without a healthy backend), or the proxy answered 503 (starting, standby,
	// draining). Such attempts cost the proxy next to nothing, and a short cap brings every agent
	// back within about that long after the proxy returns. 0 disables it.
	MaxRefused time.Duration
}

// DefaultBackoff starts at 100ms, caps at 15s (250ms while the proxy is not up: a restarted proxy
// has its agents back within about that) and resets after a session lived 10s.
func DefaultBackoff() Backoff {
	return Backoff{Initial: 100 * time.Millisecond, Max: 15 * time.Second, ResetAfter: 10 * time.Second, MaxRefused: 250 * time.Millisecond}
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

// ProxyNotUp reports whether err says the proxy is not up yet rather than that it refused the
// agent: a refused or reset connection, a connection closed before the answer (EOF), or a 503 of
// the agent endpoint (ErrProxyUnavailable). Authentication failures, pin mismatches, timeouts and
// any other answer are not.
func ProxyNotUp(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrUnknownCluster), errors.Is(err, ErrRateLimited),
		errors.Is(err, ErrCAHashMismatch):
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrProxyUnavailable)
}

// DurationAfter is Duration, capped by MaxRefused when err says the proxy is not up yet
// (ProxyNotUp).
func (b Backoff) DurationAfter(attempt int, err error) time.Duration {
	if b.MaxRefused > 0 && ProxyNotUp(err) {
		c := min(b.ceiling(attempt), b.MaxRefused)
		return time.Duration(rand.Int64N(int64(c) + 1))
	}
	return b.Duration(attempt)
}
