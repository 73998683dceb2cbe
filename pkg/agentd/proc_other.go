//go:build !unix

package agentd

import (
	"errors"
	"os"
	"os/exec"
)

// clawkerd runs in Linux containers; elsewhere it only has to compile.

var errUnsupported = errors.New("not supported on this platform")

var StopSignals = []os.Signal{os.Interrupt}
var ForwardedSignals []os.Signal

var sigKill = os.Kill
var sigTerm = os.Interrupt

func isStopSignal(sig os.Signal) bool     { return sig == os.Interrupt }
func newGroup(*exec.Cmd)                  {}
func signalGroup(int, os.Signal) error    { return errUnsupported }
func runAs(*exec.Cmd, uint32) error       { return errUnsupported }
func exitCode(ps *os.ProcessState) int    { return ps.ExitCode() }
func exitText(ps *os.ProcessState) string { return ps.String() }
func ownerOf(string) (int, int)           { return -1, -1 }
