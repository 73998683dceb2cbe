package agentd

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/clawker/clawker-cp/pkg/testkit"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

const prSetChildSubreaper = 36

// subreaper makes this test process adopt its orphaned grandchildren, as
// PID 1 adopts every orphan in a container.
func subreaper(t *testing.T) {
	t.Helper()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", errno)
	}
	t.Cleanup(func() { syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0) })
}

// reaped reports that pid is no longer a zombie child of this process.
func reaped(pid int) bool {
	st, ppid := procState(pid)
	return st == 0 || ppid != os.Getpid() || st != 'Z'
}

// TestReapOrphans runs init steps that each leave an orphan behind, many at
// once: the orphans must be reaped, and not one step may lose its exit
// status to the reaper (the bug a blind wait4(-1) has).
func TestReapOrphans(t *testing.T) {
	subreaper(t)
	e := newEnv(t)
	e.cfg.Reap = true
	e.run()
	s := e.cp.nextSession(t)

	const n = 40
	var cmds []*agentv1.Command
	for i := range n {
		cmds = append(cmds, initStep(fmt.Sprintf("r%d", i), uint32(os.Geteuid()), 0, nil,
			"sh", "-c", fmt.Sprintf("sleep 0.0%d >/dev/null & echo $!; sleep 0.0%d; exit %d", i%5, (i+2)%5, i%7)))
	}
	out := s.do(t, cmds...)
	var orphans []int
	for i := range n {
		o := out[fmt.Sprintf("r%d", i)]
		if o.result.GetExitCode() != int32(i%7) || o.result.GetOk() != (i%7 == 0) {
			t.Errorf("r%d: result %v, want exit %d (status stolen?)", i, o.result, i%7)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(o.stdout)))
		if err != nil {
			t.Fatalf("r%d: stdout %q", i, o.stdout)
		}
		orphans = append(orphans, pid)
	}
	for _, pid := range orphans {
		testkit.WaitFor(t, waitLimit, fmt.Sprintf("orphan %d to be reaped", pid), func() bool { return reaped(pid) })
	}
	if len(e.logs.events(t, "orphan_reaped")) == 0 {
		t.Error("no orphan_reaped line")
	}
}

// TestReapKeepsUserCommandStatus: the user's command exits while its own
// child lives on as an orphan; its exit code must still be clawkerd's.
func TestReapKeepsUserCommandStatus(t *testing.T) {
	subreaper(t)
	e := newEnv(t)
	e.cfg.Reap = true
	r := e.run("sh", "-c", "sleep 0.2 >/dev/null & exit 9")
	if code := r.wait(t); code != 9 {
		t.Fatalf("exit code %d, want 9", code)
	}
}

// TestForegroundTTY: under `docker run -it` clawkerd is in the foreground
// of the container's terminal, and the user's command (in a process group
// of its own) must take that over, or an interactive program would be
// stopped by SIGTTIN. The test re-runs itself as a session leader on a
// fresh pseudo-terminal, where it plays clawkerd.
func TestForegroundTTY(t *testing.T) {
	if os.Getenv("AGENTD_TTY_HELPER") == "1" {
		e := newEnv(t)
		e.cfg.Stdin = os.Stdin // the terminal
		verdict := e.path("verdict")
		r := e.run("sh", "-c", `set -- $(cat /proc/$$/stat); if [ "$5" = "$8" ]; then echo fg; else echo "bg pgrp=$5 tpgid=$8"; fi > "$0"`, verdict)
		if code := r.wait(t); code != 0 {
			t.Fatalf("exit code %d", code)
		}
		if got := strings.TrimSpace(readFile(t, verdict)); got != "fg" {
			t.Fatalf("the command is not the terminal's foreground process group: %s", got)
		}
		return
	}
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	defer master.Close()
	var unlock int32
	var ptn uint32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); errno != 0 {
		t.Skipf("unlockpt: %v", errno)
	}
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&ptn))); errno != 0 {
		t.Skipf("ptsname: %v", errno)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", ptn), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pts: %v", err)
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestForegroundTTY$", "-test.count=1", "-test.v")
	helper.Env = append(os.Environ(), "AGENTD_TTY_HELPER=1")
	helper.Stdin, helper.Stdout, helper.Stderr = slave, slave, slave
	helper.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out bytes.Buffer
	drained := make(chan struct{})
	go func() { io.Copy(&out, master); close(drained) }() // EIO once the helper is gone
	waitErr := make(chan error, 1)
	go func() { waitErr <- helper.Wait() }()
	select {
	case err = <-waitErr:
	case <-time.After(2 * waitLimit):
		helper.Process.Kill()
		err = <-waitErr
	}
	master.Close()
	<-drained
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
}
