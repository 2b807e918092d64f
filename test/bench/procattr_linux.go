package main

import (
	"os/exec"
	"syscall"
)

const sigterm = syscall.SIGTERM

// setDeathSignal kills the child when the bench dies, so a crashed run leaves no proxy or agent.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
