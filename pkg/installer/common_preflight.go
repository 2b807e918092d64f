package installer

import (
	"fmt"
	"strings"
)

// Severity of a preflight check.
type Severity string

const (
	SeverityOK    Severity = "ok"
	SeverityWarn  Severity = "warn"
	SeverityError Severity = "error"
)

// Check is one preflight result. Message says what was found; Hint (optional) says what to do.
type Check struct {
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Hint     string   `json:"hint,omitempty"`
}

// String renders "[ok] message" / "[error] message: hint".
func (c Check) String() string {
	if c.Hint == "" {
		return fmt.Sprintf("[%s] %s", c.Severity, c.Message)
	}
	return fmt.Sprintf("[%s] %s; %s", c.Severity, c.Message, c.Hint)
}

// Preflight collects checks so that all of them are reported together before any change.
// The zero value is ready to use.
type Preflight struct {
	Checks []Check `json:"checks"`
}

// OK records a passing check.
func (p *Preflight) OK(format string, args ...any) {
	p.add(SeverityOK, "", format, args...)
}

// Warn records a warning: the operation continues.
func (p *Preflight) Warn(hint, format string, args ...any) {
	p.add(SeverityWarn, hint, format, args...)
}

// Error records a blocking problem; hint should name the flag or command that fixes it.
func (p *Preflight) Error(hint, format string, args ...any) {
	p.add(SeverityError, hint, format, args...)
}

func (p *Preflight) add(s Severity, hint, format string, args ...any) {
	p.Checks = append(p.Checks, Check{Severity: s, Message: fmt.Sprintf(format, args...), Hint: hint})
}

// Merge appends the checks of another preflight (for example the member side of a join).
func (p *Preflight) Merge(o *Preflight) {
	if o != nil {
		p.Checks = append(p.Checks, o.Checks...)
	}
}

// HasErrors reports whether any check failed.
func (p *Preflight) HasErrors() bool { return len(p.Errors()) > 0 }

// Errors returns the failed checks.
func (p *Preflight) Errors() []Check {
	var out []Check
	for _, c := range p.Checks {
		if c.Severity == SeverityError {
			out = append(out, c)
		}
	}
	return out
}

// Err returns a *PreflightError when a check failed, else nil.
func (p *Preflight) Err() error {
	if errs := p.Errors(); len(errs) > 0 {
		return &PreflightError{Failed: errs}
	}
	return nil
}

// PreflightError is returned when preflight checks fail; nothing was changed.
type PreflightError struct {
	Failed []Check
}

func (e *PreflightError) Error() string {
	if len(e.Failed) == 1 {
		return "preflight failed, nothing was changed: " + e.Failed[0].Message + hintSuffix(e.Failed[0])
	}
	msgs := make([]string, 0, len(e.Failed))
	for _, c := range e.Failed {
		msgs = append(msgs, c.Message+hintSuffix(c))
	}
	return fmt.Sprintf("preflight failed (%d errors), nothing was changed:\n  - %s", len(e.Failed), strings.Join(msgs, "\n  - "))
}

func hintSuffix(c Check) string {
	if c.Hint == "" {
		return ""
	}
	return " (" + c.Hint + ")"
}
