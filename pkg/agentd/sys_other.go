//go:build !linux

package agentd

import (
	"os"
	"os/exec"
)

// Reaping as PID 1 and terminal hand-over only matter in Linux containers.

func startReaper(*procTable, eventLog) (stop func()) { return func() {} }
func foreground(*exec.Cmd, *os.File)                 {}
