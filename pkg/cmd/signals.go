package cmd

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// interruptible returns a context that ends on Ctrl-C or SIGTERM (or with parent, which may be
// nil), so that a command stops between steps and leaves a state a re-run completes.
func interruptible(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// startRun is the scope of a command that changes clusters: a context that the first interrupt
// cancels, and the progress reporter on stderr; done closes the reporter, then stops listening.
func (i *Interaction) startRun(parent context.Context, streams genericiooptions.IOStreams) (context.Context, *progressReporter, func()) {
	ctx, stop := interruptible(parent)
	rep := newProgressReporter(streams.ErrOut, i.StderrIsTerminal(streams))
	return ctx, rep, func() { rep.Close(); stop() }
}
