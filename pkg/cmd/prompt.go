package cmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/AlecAivazis/survey/v2"
	"github.com/AlecAivazis/survey/v2/terminal"
	"golang.org/x/term"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// Prompter asks the user questions on a terminal. Commands never prompt without one: they first
// check Interaction.Interactive and otherwise fail with a MissingAnswerError naming the flag.
type Prompter interface {
	// Select offers options; with q.Other set, a last entry lets the user type a value instead.
	// It returns the chosen option's Value or the typed value.
	Select(q SelectQuestion) (string, error)
	// Input asks for free text.
	Input(q InputQuestion) (string, error)
	// Confirm asks a yes/no question.
	Confirm(message string, def bool) (bool, error)
}

// Option is one choice of a SelectQuestion.
type Option struct {
	Value       string
	Description string
}

// SelectQuestion configures Prompter.Select.
type SelectQuestion struct {
	Message string
	Help    string
	Options []Option
	// Default is the Value preselected (optional).
	Default string
	// Other, when not empty, is the label of the free-entry choice (for example "enter another
	// address"); OtherMessage is then asked as an input.
	Other        string
	OtherMessage string
	// Validate checks the chosen or typed value; typed values are asked again until valid.
	Validate func(string) error
}

// InputQuestion configures Prompter.Input.
type InputQuestion struct {
	Message  string
	Help     string
	Default  string
	Validate func(string) error
}

// MissingAnswerError is returned when a command needs an answer, there is no terminal to ask on,
// and the flag that supplies it was not given.
type MissingAnswerError struct {
	// Flag is the flag that answers the question ("--proxy-publish-address").
	Flag string
	// Example is a sample value ("http://HOST:PORT").
	Example string
	// Reason is why the answer is needed.
	Reason string
	// Suggestions are possible values (shown in the message).
	Suggestions []string
}

func (e *MissingAnswerError) Error() string {
	var b strings.Builder
	if e.Reason != "" {
		b.WriteString(e.Reason)
		b.WriteString(", and ")
	}
	b.WriteString("no terminal to ask on: pass ")
	b.WriteString(e.Flag)
	if e.Example != "" {
		b.WriteString("=" + e.Example)
	}
	if len(e.Suggestions) > 0 {
		b.WriteString("\ncandidates:\n  " + strings.Join(e.Suggestions, "\n  "))
	}
	return b.String()
}

// Interaction decides whether a command may prompt and with what. Tests set TTY and Prompter.
type Interaction struct {
	// TTY overrides terminal detection when not nil.
	TTY *bool
	// Prompter overrides the survey prompter when not nil.
	Prompter Prompter
}

// Interactive reports whether prompts are possible: stdin and stderr (where prompts go) are terminals.
func (i *Interaction) Interactive(streams genericiooptions.IOStreams) bool {
	if i.TTY != nil {
		return *i.TTY
	}
	return isTerminal(streams.In) && isTerminal(streams.ErrOut)
}

// StderrIsTerminal reports whether progress may use a spinner.
func (i *Interaction) StderrIsTerminal(streams genericiooptions.IOStreams) bool {
	if i.TTY != nil {
		return *i.TTY
	}
	return isTerminal(streams.ErrOut)
}

// PrompterFor returns the configured Prompter or a survey one on the given streams.
func (i *Interaction) PrompterFor(streams genericiooptions.IOStreams) Prompter {
	if i.Prompter != nil {
		return i.Prompter
	}
	return &SurveyPrompter{In: streams.In, Err: streams.ErrOut}
}

func isTerminal(v any) bool {
	f, ok := v.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// ErrPromptAborted is returned when the user interrupts a prompt (Ctrl-C).
var ErrPromptAborted = errors.New("aborted by the user; nothing more was changed")

// SurveyPrompter prompts with survey/v2 on stdin, writing to stderr.
type SurveyPrompter struct {
	In  io.Reader
	Err io.Writer
}

func (s *SurveyPrompter) opts(validate func(string) error) []survey.AskOpt {
	in, _ := s.In.(terminal.FileReader)
	out, _ := s.Err.(terminal.FileWriter)
	if in == nil {
		in = os.Stdin
	}
	if out == nil {
		out = os.Stderr
	}
	o := []survey.AskOpt{survey.WithStdio(in, out, s.Err)}
	if validate != nil {
		o = append(o, survey.WithValidator(func(ans any) error {
			switch v := ans.(type) {
			case string:
				return validate(strings.TrimSpace(v))
			case survey.OptionAnswer:
				return nil // options are validated after the choice
			}
			return nil
		}))
	}
	return o
}

func surveyErr(err error) error {
	if errors.Is(err, terminal.InterruptErr) {
		return ErrPromptAborted
	}
	return err
}

// Select implements Prompter.
func (s *SurveyPrompter) Select(q SelectQuestion) (string, error) {
	labels := make([]string, 0, len(q.Options)+1)
	byLabel := map[string]string{}
	var def any
	for _, o := range q.Options {
		label := o.Value
		if o.Description != "" {
			label = fmt.Sprintf("%s  (%s)", o.Value, o.Description)
		}
		labels = append(labels, label)
		byLabel[label] = o.Value
		if o.Value == q.Default {
			def = label
		}
	}
	if q.Other != "" {
		labels = append(labels, q.Other)
	}
	if len(labels) == 0 {
		return "", errors.New("nothing to choose from")
	}
	for {
		var choice string
		p := &survey.Select{Message: q.Message, Options: labels, Help: q.Help}
		if def != nil {
			p.Default = def
		}
		if err := survey.AskOne(p, &choice, s.opts(nil)...); err != nil {
			return "", surveyErr(err)
		}
		if q.Other != "" && choice == q.Other {
			msg := q.OtherMessage
			if msg == "" {
				msg = q.Message
			}
			return s.Input(InputQuestion{Message: msg, Help: q.Help, Validate: q.Validate})
		}
		v := byLabel[choice]
		if q.Validate != nil {
			if err := q.Validate(v); err != nil {
				fmt.Fprintf(s.Err, "invalid choice: %v\n", err)
				continue
			}
		}
		return v, nil
	}
}

// Input implements Prompter.
func (s *SurveyPrompter) Input(q InputQuestion) (string, error) {
	var v string
	p := &survey.Input{Message: q.Message, Default: q.Default, Help: q.Help}
	if err := survey.AskOne(p, &v, s.opts(q.Validate)...); err != nil {
		return "", surveyErr(err)
	}
	return strings.TrimSpace(v), nil
}

// Confirm implements Prompter.
func (s *SurveyPrompter) Confirm(message string, def bool) (bool, error) {
	v := def
	if err := survey.AskOne(&survey.Confirm{Message: message, Default: def}, &v, s.opts(nil)...); err != nil {
		return false, surveyErr(err)
	}
	return v, nil
}
