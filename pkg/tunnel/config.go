package tunnel

import (
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// Config tunes one tunnel session; the agent and the proxy use the same values.
type Config struct {
	// KeepAliveInterval is how often each side pings the other (both sides ping).
	KeepAliveInterval time.Duration
	// KeepAliveTimeout bounds how long a ping (and any frame write) may wait. A half-open
	// connection is detected within KeepAliveInterval + KeepAliveTimeout on both sides, and all its
	// streams then fail.
	KeepAliveTimeout time.Duration
	// HandshakeTimeout bounds dialing, TLS and the HTTP upgrade.
	HandshakeTimeout time.Duration
	// StreamWindowSize is the per-stream receive window (yamux MaxStreamWindowSize). 1–4 MiB
	// keeps bulk throughput without making small requests wait behind a bulk transfer.
	StreamWindowSize uint32
	// StreamOpenTimeout bounds opening a stream (SYN → ACK) and reading its header.
	StreamOpenTimeout time.Duration
	// AcceptBacklog is how many opened streams may wait to be accepted.
	AcceptBacklog int
	// MaxStreamsPerSession caps the streams open at once on one session: the proxy opens no more
	// (ErrStreamLimit), the agent refuses the surplus ("ERR busy"). With StreamWindowSize it
	// bounds what one session can pin in memory (streams × window on each side).
	MaxStreamsPerSession int
	// DrainTimeout bounds the graceful shutdown: after GoAway, open streams get this long to finish.
	DrainTimeout time.Duration
	// Backoff governs the agent's reconnects.
	Backoff Backoff
}

// Limits of the defaults and of validation.
const (
	// DefaultMaxStreamsPerSession: a console and its controllers keep a few hundred to a few
	// thousand watches open (each is one stream). With StreamWindowSize it bounds what one
	// session's slow readers can pin: streams × window, reached only if every stream's reader
	// stalls after its window grew to the maximum.
	DefaultMaxStreamsPerSession = 2048
	// MaxStreamWindowSize is the largest accepted StreamWindowSize.
	MaxStreamWindowSize = 16 << 20
)

// DefaultConfig returns the values the commands use: keepalive 10s, timeout 10s (so a half-open
// connection is found within 20s), 2 MiB windows, drain 25s (inside a pod's default 30s grace).
func DefaultConfig() *Config {
	return &Config{
		KeepAliveInterval:    10 * time.Second,
		KeepAliveTimeout:     10 * time.Second,
		HandshakeTimeout:     15 * time.Second,
		StreamWindowSize:     2 << 20,
		StreamOpenTimeout:    10 * time.Second,
		AcceptBacklog:        1024,
		MaxStreamsPerSession: DefaultMaxStreamsPerSession,
		DrainTimeout:         25 * time.Second,
		Backoff:              DefaultBackoff(),
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c == nil:
		return fmt.Errorf("%w: nil config", ErrInvalidConfig)
	case c.KeepAliveInterval <= 0:
		return fmt.Errorf("%w: keepalive interval must be positive", ErrInvalidConfig)
	case c.KeepAliveTimeout <= 0:
		return fmt.Errorf("%w: keepalive timeout must be positive", ErrInvalidConfig)
	case c.HandshakeTimeout <= 0:
		return fmt.Errorf("%w: handshake timeout must be positive", ErrInvalidConfig)
	case c.StreamWindowSize < 256*1024 || c.StreamWindowSize > MaxStreamWindowSize:
		return fmt.Errorf("%w: stream window must be between 256 KiB and 16 MiB", ErrInvalidConfig)
	case c.MaxStreamsPerSession <= 0:
		return fmt.Errorf("%w: max streams per session must be positive", ErrInvalidConfig)
	case c.StreamOpenTimeout <= 0:
		return fmt.Errorf("%w: stream open timeout must be positive", ErrInvalidConfig)
	case c.AcceptBacklog <= 0:
		return fmt.Errorf("%w: accept backlog must be positive", ErrInvalidConfig)
	case c.DrainTimeout < 0:
		return fmt.Errorf("%w: drain timeout must not be negative", ErrInvalidConfig)
	}
	return c.Backoff.Validate()
}

// yamuxConfig maps Config onto yamux's.
func (c *Config) yamuxConfig() *yamux.Config {
	return &yamux.Config{
		AcceptBacklog:          c.AcceptBacklog,
		EnableKeepAlive:        true,
		KeepAliveInterval:      c.KeepAliveInterval,
		ConnectionWriteTimeout: c.KeepAliveTimeout,
		MaxStreamWindowSize:    c.StreamWindowSize,
		StreamOpenTimeout:      c.StreamOpenTimeout,
		StreamCloseTimeout:     5 * time.Minute,
		LogOutput:              io.Discard,
	}
}
