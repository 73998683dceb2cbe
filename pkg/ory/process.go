package ory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of ProcessConfig.
const (
	DefaultPollInterval = 100 * time.Millisecond
	DefaultStopGrace    = 5 * time.Second
	// maxLine bounds a line held back while waiting for its newline; a
	// longer one is copied in pieces.
	maxLine = 64 << 10
)

// TelemetryOff is in every server's environment: Ory's anonymous usage
// reports (SQA) are off, so nothing tries to reach the internet.
const TelemetryOff = "SQA_OPT_OUT=true"

// OfflineEnv points the servers' HTTP clients at a proxy on a closed
// loopback port: whatever outbound request to a non-loopback host an Ory
// server might attempt (telemetry, a remote schema or JWKS, a breached
// password lookup) fails on the spot instead of leaving the machine. Go
// never proxies loopback, so the servers still reach each other and the
// health port.
var OfflineEnv = []string{
	"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9",
	"http_proxy=http://127.0.0.1:9", "https_proxy=http://127.0.0.1:9",
	"NO_PROXY=", "no_proxy=",
}

// ProcessConfig describes one server process.
type ProcessConfig struct {
	Name string // prefix of its output lines, and of errors
	Path string // the binary
	Args []string
	// Env is the process's whole environment besides TelemetryOff: nothing
	// is inherited from the control plane, so no stray variable (DSN,
	// SERVE_*, HTTP_PROXY ...) can reconfigure an Ory server, which reads
	// its settings from the environment too.
	Env []string
	Dir string
	// Output receives each line of stdout and stderr as "<name>: <line>\n";
	// nil means os.Stderr. Lines of the two streams never interleave.
	Output io.Writer
	// Ready is the readiness probe WaitReady polls (nil: ready at once).
	Ready        func(ctx context.Context) error
	PollInterval time.Duration
	// User, when set, is who the server runs as: the control plane (root)
	// starts itself as the launcher (launch_linux.go), which empties every
	// capability set, sets no_new_privs, becomes User with no
	// supplementary group and execs the binary. User must be able to reach
	// and execute the binary and everything its configuration names.
	User *User
}

// Exit is how a process ended.
type Exit struct {
	PID int
	// Code is the exit status, -1 when a signal ended the process.
	Code int
	// Signal names the signal that ended it ("" if none).
	Signal string
	// Stopped reports that Stop asked for the exit.
	Stopped bool
	// Err is set when the process could not be waited for properly.
	Err error
}

func (e Exit) String() string {
	s := fmt.Sprintf("exit code %d", e.Code)
	if e.Signal != "" {
		s = "signal: " + e.Signal // as os.ProcessState says it
	}
	if e.Err != nil {
		s += " (" + e.Err.Error() + ")"
	}
	return s
}

// Process is one running server.
type Process struct {
	cfg    ProcessConfig
	cmd    *exec.Cmd
	out    [2]*lineWriter
	exited chan Exit
	done   chan struct{}

	mu      sync.Mutex
	exit    Exit
	stopped bool
}

// StartProcess starts the binary. It returns once the process runs; its
// exit is reported on Exited (and closes Done) whatever the reason.
func StartProcess(cfg ProcessConfig) (*Process, error) {
	if cfg.Output == nil {
		cfg.Output = os.Stderr
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	p := &Process{cfg: cfg, exited: make(chan Exit, 1), done: make(chan struct{})}
	mu := &sync.Mutex{}
	prefix := []byte(cfg.Name + ": ")
	p.out[0] = &lineWriter{prefix: prefix, w: cfg.Output, mu: mu}
	p.out[1] = &lineWriter{prefix: prefix, w: cfg.Output, mu: mu}

	path := cfg.Path
	if cfg.Dir != "" && !filepath.IsAbs(path) && strings.ContainsRune(path, filepath.Separator) {
		// exec resolves a relative path containing a separator against
		// cmd.Dir, where it leads nowhere (`clawker-cp --ory-dir bin/ory`
		// failed with fork/exec bin/ory/hydra): resolve it against our own
		// working directory, where the caller meant it.
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("%s: binary %s: %w", cfg.Name, path, err)
		}
		path = abs
	}
	cmd := exec.Command(path, cfg.Args...)
	if cfg.User != nil {
		launcher, err := launcherCommand(*cfg.User, path, cfg.Args)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.Name, err)
		}
		cmd = launcher
	}
	cmd.Env = append([]string{TelemetryOff}, cfg.Env...)
	cmd.Dir = cfg.Dir
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = p.out[0], p.out[1]
	cmd.SysProcAttr = sysProcAttr()
	// A grandchild holding the pipes open must not keep Wait (and the
	// exit report) from returning.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: starting %s: %w", cfg.Name, cfg.Path, err)
	}
	p.cmd = cmd
	go p.wait()
	return p, nil
}

// launcherCommand runs path as u through the launcher. The launcher execs
// path after it left root, so path is made absolute (cmd.Dir would move a
// relative one) and checked now, while the error can still say why.
func launcherCommand(u User, path string, args []string) (*exec.Cmd, error) {
	if launcherPath == "" {
		return nil, errors.New("running the servers as another user needs Linux")
	}
	if err := u.validate(); err != nil {
		return nil, err
	}
	resolved, err := exec.LookPath(path)
	if err != nil {
		return nil, fmt.Errorf("binary %s: %w", path, err)
	}
	if resolved, err = filepath.Abs(resolved); err != nil {
		return nil, fmt.Errorf("binary %s: %w", path, err)
	}
	if err := u.checkReachable(resolved, "binary"); err != nil {
		return nil, err
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return nil, fmt.Errorf("binary %s: %w", path, err)
	}
	// A file's execute bits read like a directory's search bits.
	if !u.searchable(fi) {
		return nil, fmt.Errorf("ory: binary %s (mode %04o) is not executable by the servers' user (%s): chmod 0755 it", resolved, fi.Mode().Perm(), u)
	}
	return exec.Command(launcherPath, launcherArgs(u, resolved, args)...), nil
}

func (p *Process) wait() {
	err := p.cmd.Wait()
	p.out[0].flush()
	p.out[1].flush()
	e := Exit{PID: p.cmd.Process.Pid, Code: -1}
	if st := p.cmd.ProcessState; st != nil {
		e.Code = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
		}
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		e.Err = err
	}
	p.mu.Lock()
	e.Stopped = p.stopped
	p.exit = e
	p.mu.Unlock()
	// done first: whoever receives from Exited must find ExitStatus
	// reporting the exit (exited is buffered, the send never blocks).
	close(p.done)
	p.exited <- e
	close(p.exited)
}

// Name is the configured name.
func (p *Process) Name() string { return p.cfg.Name }

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited delivers the process's exit once, then is closed.
func (p *Process) Exited() <-chan Exit { return p.exited }

// Done is closed once the process exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitStatus returns the exit, and false while the process runs.
func (p *Process) ExitStatus() (Exit, bool) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.exit, true
	default:
		return Exit{}, false
	}
}

// NotReadyError is WaitReady's failure.
type NotReadyError struct {
	Name    string
	Timeout time.Duration
	Exit    *Exit // set when the process exited before it was ready
	Last    error // the last probe's error
}

func (e *NotReadyError) Error() string {
	if e.Exit != nil {
		return fmt.Sprintf("%s exited before it was ready: %s", e.Name, e.Exit)
	}
	s := fmt.Sprintf("%s not ready within %s", e.Name, e.Timeout)
	if e.Last != nil {
		s += ": " + e.Last.Error()
	}
	return s
}

func (e *NotReadyError) Unwrap() error { return e.Last }

// WaitReady polls the readiness probe until it passes, the process exits,
// timeout elapses or ctx ends. Each probe is bounded by the time left.
func (p *Process) WaitReady(ctx context.Context, timeout time.Duration) error {
	if p.cfg.Ready == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(p.cfg.PollInterval)
	defer tick.Stop()
	var last error
	for {
		if e, ok := p.ExitStatus(); ok {
			return &NotReadyError{Name: p.cfg.Name, Exit: &e}
		}
		if last = p.cfg.Ready(ctx); last == nil {
			return nil
		}
		select {
		case <-tick.C:
		case <-p.done:
		case <-ctx.Done():
			if e, ok := p.ExitStatus(); ok {
				return &NotReadyError{Name: p.cfg.Name, Exit: &e}
			}
			return &NotReadyError{Name: p.cfg.Name, Timeout: timeout, Last: last}
		}
	}
}

// Stop sends SIGTERM, then SIGKILL if the process still runs after grace,
// and returns its exit. Stopping a process that already exited returns
// its exit at once.
func (p *Process) Stop(grace time.Duration) Exit {
	if grace <= 0 {
		grace = DefaultStopGrace
	}
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	if e, ok := p.ExitStatus(); ok {
		return e
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	e, _ := p.ExitStatus()
	return e
}

// lineWriter copies whole lines to w, each prefixed. Writers sharing mu
// never interleave inside a line.
type lineWriter struct {
	prefix []byte
	w      io.Writer
	mu     *sync.Mutex
	buf    []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	n := len(b)
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.buf = append(l.buf, b...)
			if len(l.buf) >= maxLine {
				l.emit(l.buf)
				l.buf = l.buf[:0]
			}
			break
		}
		if len(l.buf) > 0 {
			l.buf = append(l.buf, b[:i]...)
			l.emit(l.buf)
			l.buf = l.buf[:0]
		} else {
			l.emit(b[:i])
		}
		b = b[i+1:]
	}
	// The child's output must never block or fail because of ours.
	return n, nil
}

func (l *lineWriter) emit(line []byte) {
	out := make([]byte, 0, len(l.prefix)+len(line)+1)
	out = append(append(append(out, l.prefix...), bytes.TrimSuffix(line, []byte("\r"))...), '\n')
	_, _ = l.w.Write(out)
}

// flush writes a last line that had no newline.
func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emit(l.buf)
		l.buf = l.buf[:0]
	}
}
