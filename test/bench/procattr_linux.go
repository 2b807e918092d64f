package main

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const sigterm = syscall.SIGTERM

// setDeathSignal kills the child when the bench dies, so a crashed run leaves no proxy or agent.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// procClock reads the CPU clock of process pid (clock_gettime on the clock id Linux gives every
// process: CPUCLOCK_SCHED of the thread group, in nanoseconds, every thread's time, the exited
// ones' too).
func procClock(pid int) (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid<<3|2), &ts); err != nil {
		return 0, fmt.Errorf("cpu clock of %d: %w", pid, err)
	}
	return time.Duration(ts.Nano()), nil
}
