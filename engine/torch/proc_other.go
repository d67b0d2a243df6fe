//go:build !linux

package torch

import "os/exec"

// setDeathSignal: no parent-death signal outside Linux; the worker also
// exits when its request pipe closes or its parent process changes.
func setDeathSignal(cmd *exec.Cmd) {}
