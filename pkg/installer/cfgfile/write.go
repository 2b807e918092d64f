package cfgfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/pmezard/go-difflib/difflib"
)

// ErrNotWritable is returned by CheckWritable.
var ErrNotWritable = errors.New("cannot be edited in place")

// CheckWritable checks, without changing it, that path is a regular file (not a symlink: the
// edit replaces the file by a rename, which would replace the link) that can be replaced: the
// file is writable and so is its directory (for the temporary file). It returns the file's
// mode.
func CheckWritable(path string) (fs.FileMode, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNotWritable, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return 0, fmt.Errorf("%w: %s is a symlink: pass the file it points to", ErrNotWritable, path)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%w: %s is not a regular file", ErrNotWritable, path)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("%w: %s is not writable: %w", ErrNotWritable, path, errors.Unwrap(err))
	}
	_ = w.Close()
	dir := filepath.Dir(path)
	// A probe file, removed at once: portable (no access(2) on Windows) and it tests what the
	// edit needs, creating a file in dir.
	probe, err := os.CreateTemp(dir, "."+filepath.Base(path)+".ks-mc-probe-*")
	if err != nil {
		return 0, fmt.Errorf("%w: directory %s is not writable (the new file is written beside the old one, then renamed): %w", ErrNotWritable, dir, errors.Unwrap(err))
	}
	_ = probe.Close()
	_ = os.Remove(probe.Name())
	return fi.Mode().Perm(), nil
}

// WriteFile replaces path with data: a temporary file beside it, written, synced and given
// mode, then renamed over path, and the directory synced. On any failure the original file is
// left as it was and the temporary file is removed.
func WriteFile(path string, data []byte, mode fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".ks-mc-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// UnifiedDiff returns the unified diff (3 lines of context) from a to b, "" when equal.
func UnifiedDiff(name string, a, b []byte) string {
	if string(a) == string(b) {
		return ""
	}
	s, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(a)), B: difflib.SplitLines(string(b)),
		FromFile: name, ToFile: name + " (edited)", Context: 3,
	})
	if err != nil {
		return ""
	}
	return s
}
