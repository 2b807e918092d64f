package cmd

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// interruptible returns a context that ends on Ctrl-C or SIGTERM (or with parent, which may be
// nil), so that a command stops between steps and leaves a state a re-run completes.
func interruptible(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}
