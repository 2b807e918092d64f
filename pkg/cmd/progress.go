package cmd

import (
	"fmt"
	"io"
	"regexp"
	"sync"
	"time"
)

// progressReporter implements installer.Reporter on stderr: a spinner line on a terminal, plain
// lines otherwise (a Progress line is printed when its text changes, ignoring a trailing
// "(… left)", or at most every 30s).
type progressReporter struct {
	out io.Writer
	tty bool

	mu        sync.Mutex
	msg       string
	lastPlain string
	lastTime  time.Time
	frame     int
	drawn     bool
	paused    bool
	stop      chan struct{}
	done      chan struct{}
}

var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

func newProgressReporter(out io.Writer, tty bool) *progressReporter {
	r := &progressReporter{out: out, tty: tty}
	if tty {
		r.stop, r.done = make(chan struct{}), make(chan struct{})
		go r.spin()
	}
	return r
}

func (r *progressReporter) spin() {
	defer close(r.done)
	t := time.NewTicker(120 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.mu.Lock()
			if r.msg != "" && !r.paused {
				r.frame = (r.frame + 1) % len(spinnerFrames)
				r.drawLocked()
			}
			r.mu.Unlock()
		}
	}
}

func (r *progressReporter) drawLocked() {
	fmt.Fprintf(r.out, "\r\033[K%s %s", spinnerFrames[r.frame], r.msg)
	r.drawn = true
}

func (r *progressReporter) clearLocked() {
	if r.drawn {
		fmt.Fprint(r.out, "\r\033[K")
		r.drawn = false
	}
}

func (r *progressReporter) line(prefix, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	r.msg = ""
	fmt.Fprintln(r.out, prefix+msg)
}

// Step implements installer.Reporter.
func (r *progressReporter) Step(msg string) { r.line("", msg) }

// Warn implements installer.Reporter.
func (r *progressReporter) Warn(msg string) { r.line("warning: ", msg) }

var leftSuffix = regexp.MustCompile(`\s*\([^()]* left\)$`)

// Progress implements installer.Reporter.
func (r *progressReporter) Progress(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tty {
		r.msg = msg
		if !r.paused {
			r.drawLocked()
		}
		return
	}
	key := leftSuffix.ReplaceAllString(msg, "")
	if key == r.lastPlain && time.Since(r.lastTime) < 30*time.Second {
		return
	}
	r.lastPlain, r.lastTime = key, time.Now()
	fmt.Fprintln(r.out, msg)
}

// Pause clears the spinner and keeps it off until Resume (while prompting).
func (r *progressReporter) Pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	r.paused = true
}

// Resume lets the spinner draw again.
func (r *progressReporter) Resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paused = false
}

// Close stops the spinner and clears its line.
func (r *progressReporter) Close() {
	if r.stop != nil {
		close(r.stop)
		<-r.done
		r.stop = nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	r.msg = ""
}
