package agentd

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"sync"
	"time"
)

// workload is the user's command: started once, after the first Session
// is established, and then left alone across reconnects.
type workload struct {
	argv   []string
	procs  *procTable
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	log    eventLog

	mu    sync.Mutex
	state workState
	cmd   *exec.Cmd
	done  chan struct{} // closed once it exited (state exited)
	code  int
}

type workState int

const (
	workIdle    workState = iota // not started yet
	workRunning                  // started, not exited
	workExited                   // exited; code is set
	workBlocked                  // will never start: clawkerd is stopping
)

// killWait bounds the wait for a SIGKILLed command to be collected.
const killWait = 5 * time.Second

var errBlocked = errors.New("clawkerd is stopping")

// start starts the command and returns a channel closed when it exits.
func (w *workload) start() (<-chan struct{}, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != workIdle {
		return nil, errBlocked
	}
	cmd := exec.Command(w.argv[0], w.argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = w.stdin, w.stdout, w.stderr
	newGroup(cmd)
	if f, ok := w.stdin.(*os.File); ok {
		foreground(cmd, f)
	}
	// Only matters when stdio is not a file (tests): do not wait forever
	// for a grandchild that keeps a pipe open.
	cmd.WaitDelay = time.Second
	if err := w.procs.start(cmd); err != nil {
		w.state = workBlocked
		return nil, err
	}
	w.cmd, w.state, w.done = cmd, workRunning, make(chan struct{})
	go func(done chan struct{}) {
		_ = w.procs.wait(cmd) // the ProcessState says it all
		code := ExitFailure
		if cmd.ProcessState != nil {
			code = exitCode(cmd.ProcessState)
		}
		w.mu.Lock()
		w.state, w.code = workExited, code
		w.mu.Unlock()
		close(done)
	}(w.done)
	return w.done, nil
}

// startExitCode maps a failure to start to the shell's codes.
func startExitCode(err error) int {
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		return ExitNotFound
	}
	return ExitCannotExecute
}

func (w *workload) pid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil || w.cmd.Process == nil {
		return 0
	}
	return w.cmd.Process.Pid
}

func (w *workload) exitCode() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.code
}

// running reports whether it runs, and blocks a later start if it did not
// start yet.
func (w *workload) runningOrBlock() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state == workIdle {
		w.state = workBlocked
	}
	return w.state == workRunning
}

// signal sends sig to the command's process group if it runs.
func (w *workload) signal(sig os.Signal) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != workRunning {
		return nil
	}
	return signalGroup(w.cmd.Process.Pid, sig)
}

// stop ends the command: SIGTERM to its process group, then SIGKILL if it
// is still there after grace. It returns once the command is gone (or
// killWait after the SIGKILL), and blocks a later start.
func (w *workload) stop(grace time.Duration) {
	w.mu.Lock()
	if w.state == workIdle {
		w.state = workBlocked
	}
	if w.state != workRunning {
		w.mu.Unlock()
		return
	}
	pid, done := w.cmd.Process.Pid, w.done
	w.mu.Unlock()

	w.log.info("agent_command_stopping", "sending SIGTERM to the command's process group", "pid", pid, "grace", grace.String())
	if err := signalGroup(pid, sigTerm); err != nil {
		w.log.warn("agent_command_signal_failed", "could not signal the command", "pid", pid, "error", err.Error())
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	w.log.warn("agent_command_killed", "grace period over, sending SIGKILL to the command's process group", "pid", pid)
	if err := signalGroup(pid, sigKill); err != nil {
		w.log.warn("agent_command_signal_failed", "could not kill the command", "pid", pid, "error", err.Error())
	}
	select {
	case <-done:
	case <-time.After(killWait):
		w.log.error("agent_command_unkillable", "the command survived SIGKILL", "pid", pid)
	}
}
