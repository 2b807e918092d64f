package cmd

import "fmt"

// FakePrompter answers from a script, for tests. Each answer is consumed in order: a string for
// Select (an option Value, or any other text meaning free entry) and Input, a bool for Confirm.
// Asking more questions than scripted, or an answer of the wrong type, is an error.
type FakePrompter struct {
	Answers []any
	// Asked records the questions (messages) in order.
	Asked []string
	// Selects records the questions of Select calls, to check the offered options.
	Selects []SelectQuestion
}

func (f *FakePrompter) next(msg string) (any, error) {
	f.Asked = append(f.Asked, msg)
	if len(f.Answers) == 0 {
		return nil, fmt.Errorf("fake prompter: unexpected question %q", msg)
	}
	a := f.Answers[0]
	f.Answers = f.Answers[1:]
	return a, nil
}

// Select implements Prompter; the answer is validated like a real one.
func (f *FakePrompter) Select(q SelectQuestion) (string, error) {
	f.Selects = append(f.Selects, q)
	a, err := f.next(q.Message)
	if err != nil {
		return "", err
	}
	s, ok := a.(string)
	if !ok {
		return "", fmt.Errorf("fake prompter: answer %v to %q is not a string", a, q.Message)
	}
	isOption := false
	for _, o := range q.Options {
		isOption = isOption || o.Value == s
	}
	if !isOption && q.Other == "" {
		return "", fmt.Errorf("fake prompter: %q is not an option of %q", s, q.Message)
	}
	if q.Validate != nil {
		if err := q.Validate(s); err != nil {
			return "", err
		}
	}
	return s, nil
}

// Input implements Prompter.
func (f *FakePrompter) Input(q InputQuestion) (string, error) {
	a, err := f.next(q.Message)
	if err != nil {
		return "", err
	}
	s, ok := a.(string)
	if !ok {
		return "", fmt.Errorf("fake prompter: answer %v to %q is not a string", a, q.Message)
	}
	if s == "" {
		s = q.Default
	}
	if q.Validate != nil {
		if err := q.Validate(s); err != nil {
			return "", err
		}
	}
	return s, nil
}

// Confirm implements Prompter.
func (f *FakePrompter) Confirm(message string, _ bool) (bool, error) {
	a, err := f.next(message)
	if err != nil {
		return false, err
	}
	b, ok := a.(bool)
	if !ok {
		return false, fmt.Errorf("fake prompter: answer %v to %q is not a bool", a, message)
	}
	return b, nil
}
