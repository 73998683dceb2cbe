//go:build unix

package agentd

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// StopSignals end clawkerd: they are forwarded to the user's command, and
// clawkerd exits with its code once it is gone.
var StopSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT}

// ForwardedSignals are passed on to the user's command and change nothing
// else.
var ForwardedSignals = []os.Signal{syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

func isStopSignal(sig os.Signal) bool {
	return sig == syscall.SIGTERM || sig == syscall.SIGINT
}

// newGroup puts cmd in a process group of its own, so that a signal or a
// kill reaches whatever it spawned too.
func newGroup(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

// signalGroup signals the process group led by pid. A group whose members
// are all gone is not an error.
func signalGroup(pid int, sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("unsupported signal %v", sig)
	}
	if err := syscall.Kill(-pid, s); err != nil && err != syscall.ESRCH {
		return err
	}
	return nil
}

var sigKill os.Signal = syscall.SIGKILL
var sigTerm os.Signal = syscall.SIGTERM

// runAs makes cmd run as uid (and gid = uid) when that is not who clawkerd
// already is. Switching needs root.
func runAs(cmd *exec.Cmd, uid uint32) error {
	euid := os.Geteuid()
	if int64(uid) == int64(euid) {
		return nil
	}
	if euid != 0 {
		return fmt.Errorf("uid %d requested, but clawkerd runs as uid %d and is not root", uid, euid)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Groups is empty: the supplementary groups of root are dropped.
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: uid}
	return nil
}

// exitCode is the shell's convention: the exit status, or 128+signal.
func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func exitText(ps *os.ProcessState) string {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
	}
	return fmt.Sprintf("exit status %d", ps.ExitCode())
}

// ownerOf is who should own what clawkerd creates under dir: dir's owner
// when clawkerd runs as root and dir belongs to someone else (the agent's
// user must be able to read its MCP configs), else -1, -1 (leave as is).
func ownerOf(dir string) (uid, gid int) {
	if os.Geteuid() != 0 {
		return -1, -1
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return -1, -1
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return -1, -1
	}
	return int(st.Uid), int(st.Gid)
}
