package torch

import (
	"os/exec"
	"syscall"
)

// setDeathSignal has the kernel SIGKILL the worker when the node's thread
// that started it exits, so a node that dies leaves no worker behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
