package agentd

import (
	"encoding/binary"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"unsafe"
)

// startReaper reaps orphans until stop is called: on every SIGCHLD, and
// whenever one of our own children was collected (procTable.wait kicks it,
// see the comment on procTable for why both are needed).
func startReaper(p *procTable, log eventLog) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	kick := make(chan struct{}, 1)
	p.kick = func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		defer signal.Stop(sigs)
		for {
			reapOrphans(p, log)
			select {
			case <-sigs:
			case <-kick:
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// reapOrphans reaps exited children that clawkerd did not start itself.
func reapOrphans(p *procTable, log eventLog) {
	p.startMu.Lock() // no Start can be between fork and being recorded
	defer p.startMu.Unlock()
	for {
		pid := peekExited()
		if pid <= 0 || p.tracked(pid) {
			// Nothing exited, or the first exited child is ours: its
			// exec.Cmd.Wait collects it, and kicks another pass after.
			return
		}
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || got != pid {
			return
		}
		log.debug("orphan_reaped", "reaped an orphaned process", "pid", pid, "status", int(ws))
	}
}

// siginfo_t: three int32 (signo, errno, code), then a union aligned to the
// pointer size whose first member is si_pid.
const siPidOffset = 12 + (unsafe.Sizeof(uintptr(0)) - 4)

// peekExited returns the pid of an exited child without reaping it
// (waitid(P_ALL, WEXITED|WNOHANG|WNOWAIT)), or 0 if there is none.
func peekExited() int {
	var info [128]byte // sizeof(siginfo_t)
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, 0 /* P_ALL */, 0,
			uintptr(unsafe.Pointer(&info[0])), syscall.WEXITED|syscall.WNOHANG|syscall.WNOWAIT, 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			return 0 // ECHILD: no children at all
		}
		return int(int32(binary.NativeEndian.Uint32(info[siPidOffset:])))
	}
}

// foreground makes cmd the foreground process group of the terminal on
// stdin when clawkerd itself is in the foreground of it (docker run -it).
// Without this, the command's own process group would be a background one
// and an interactive program reading the terminal would be stopped by
// SIGTTIN; with it, ^C reaches the command, as in a shell.
func foreground(cmd *exec.Cmd, stdin *os.File) {
	rc, err := stdin.SyscallConn()
	if err != nil {
		return
	}
	var fg bool
	_ = rc.Control(func(fd uintptr) {
		var pgrp int32
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCGPGRP, uintptr(unsafe.Pointer(&pgrp)))
		// fd 0 in the parent is fd 0 in the child too: Ctty names it.
		fg = fd == 0 && errno == 0 && int(pgrp) == syscall.Getpgrp()
	})
	if fg {
		// Ctty is a descriptor of the parent for Foreground.
		cmd.SysProcAttr.Foreground = true
		cmd.SysProcAttr.Ctty = 0
	}
}
