package cptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/settings"
)

// TailLines is how many lines of stderr a failure report shows.
var TailLines = 60

// Process is a started binary whose stdout and stderr are captured.
type Process struct {
	Cmd  *exec.Cmd
	home *Home
	name string

	stdout, stderr *syncBuffer

	done    chan struct{} // closed once Wait returned
	state   *os.ProcessState
	waitErr error

	healthOnce sync.Once
	healthURL  string
}

// StartCP execs the clawker-cp binary at bin with home's environment plus
// extraEnv ("KEY=value", later entries win). The process is killed
// (SIGKILL) and reaped when the test ends if it is still running; a failed
// test logs the tail of its stderr.
func StartCP(t testing.TB, home *Home, bin string, extraEnv ...string) *Process {
	t.Helper()
	return Start(t, home, bin, nil, extraEnv...)
}

// Start execs bin with args, like StartCP.
func Start(t testing.TB, home *Home, bin string, args []string, extraEnv ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(home.Env(), extraEnv...)
	p := &Process{Cmd: cmd, home: home, name: bin, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	// Should anything inherit the pipes and outlive the process, Wait still
	// returns.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("cptest: starting %s: %v", bin, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			_ = cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				t.Errorf("cptest: pid %d did not die within 30s of SIGKILL", cmd.Process.Pid)
			}
		}
		if t.Failed() {
			t.Logf("cptest: stderr of %s (pid %d), last %d lines:\n%s", bin, cmd.Process.Pid, TailLines, p.Tail(TailLines))
		}
	})
	return p
}

// Pid is the process id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has exited (and was reaped).
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed once the process exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the process to exit and returns its exit
// code. err is set when it did not exit in time or was killed by a signal
// (code -1 then).
func (p *Process) Wait(timeout time.Duration) (exitCode int, err error) {
	select {
	case <-p.done:
	default:
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			return -1, fmt.Errorf("pid %d still running after %s", p.Pid(), timeout)
		}
	}
	var exitErr *exec.ExitError
	if p.waitErr != nil && !errors.As(p.waitErr, &exitErr) {
		return -1, p.waitErr
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, fmt.Errorf("pid %d was killed by %s", p.Pid(), ws.Signal())
	}
	return p.state.ExitCode(), nil
}

// MustExit is Wait that fails the test, showing stderr's tail, when the
// process does not exit normally within timeout.
func (p *Process) MustExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	code, err := p.Wait(timeout)
	if err != nil {
		t.Fatalf("cptest: %v\nstderr tail:\n%s", err, p.Tail(TailLines))
	}
	return code
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Stderr is everything written to stderr so far.
func (p *Process) Stderr() string { return p.stderr.String() }

// Stdout is everything written to stdout so far.
func (p *Process) Stdout() string { return p.stdout.String() }

// Tail is the last n lines of stderr.
func (p *Process) Tail(n int) string { return tail(p.Stderr(), n) }

// Lines parses stderr as JSON lines, one object per line. Lines that are not
// a JSON object are left out (see NonJSON). While the process runs, a last
// line without its newline is not returned yet.
func (p *Process) Lines() []map[string]any {
	objs, _ := ParseJSONLines(p.completeStderr())
	return objs
}

// NonJSON returns the stderr lines that are not JSON objects.
func (p *Process) NonJSON() []string {
	_, other := ParseJSONLines(p.completeStderr())
	return other
}

// Events returns the stderr JSON lines whose "event" field is event.
func (p *Process) Events(event string) []map[string]any {
	return FilterEvent(p.Lines(), event)
}

func (p *Process) completeStderr() string {
	s := p.Stderr()
	if !p.Exited() {
		if i := strings.LastIndexByte(s, '\n'); i >= 0 {
			s = s[:i+1]
		} else {
			s = ""
		}
	}
	return s
}

// WaitForLine polls stderr until a JSON line satisfies pred and returns it;
// the test fails, showing stderr's tail, when none did within timeout.
func (p *Process) WaitForLine(t testing.TB, timeout time.Duration, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	var found map[string]any
	p.WaitFor(t, timeout, "a matching log line", func() (bool, string) {
		for _, l := range p.Lines() {
			if pred(l) {
				found = l
				return true, ""
			}
		}
		return false, ""
	})
	return found
}

// WaitForEvent waits for a JSON line with "event": event.
func (p *Process) WaitForEvent(t testing.TB, timeout time.Duration, event string) map[string]any {
	t.Helper()
	return p.WaitForLine(t, timeout, func(l map[string]any) bool { return l["event"] == event })
}

// WaitFor is the package's WaitFor, with stderr's tail added to the failure.
// It also fails at once if the process exits while cond is still false.
func (p *Process) WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ok, last, exited := poll(timeout, func() (bool, string, bool) {
		exited := p.Exited() // read first: a line written before the exit is seen by cond
		ok, last := cond()
		return ok, last, exited
	})
	if ok {
		return
	}
	why := fmt.Sprintf("did not happen within %s", timeout)
	if exited {
		code, err := p.Wait(0)
		why = fmt.Sprintf("the process exited first (code %d, %v)", code, err)
	}
	if last != "" {
		why += "; last seen: " + last
	}
	t.Fatalf("cptest: waiting for %s: %s\nstderr tail:\n%s", what, why, p.Tail(TailLines))
}

// HealthURL is the base URL of the control plane's health port
// ("http://127.0.0.1:<health_port>"), read from the home's settings with the
// binaries' own loader (so a missing file means the default port).
func (p *Process) HealthURL() string {
	p.healthOnce.Do(func() {
		port := 0
		if paths, err := settings.ResolvePaths(p.home.getenv); err == nil {
			if s, err := settings.Load(paths.SettingsFile); err == nil {
				port = s.ControlPlane.HealthPort
			}
		}
		if port == 0 && p.home.ports != nil {
			port = p.home.ports.Health()
		}
		p.healthURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	})
	return p.healthURL
}

// ParseJSONLines splits text into lines and parses each as a JSON object;
// lines that are not one (empty lines aside) are returned in other.
func ParseJSONLines(text string) (objs []map[string]any, other []string) {
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil || m == nil {
			other = append(other, line)
			continue
		}
		objs = append(objs, m)
	}
	return objs, other
}

// ReadJSONLines reads a file of JSON lines, such as the control plane's log
// file.
func ReadJSONLines(t testing.TB, file string) (objs []map[string]any, other []string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("cptest: %v", err)
	}
	objs, other = ParseJSONLines(string(b))
	return objs, other
}

// FilterEvent keeps the lines whose "event" field is event.
func FilterEvent(lines []map[string]any, event string) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["event"] == event {
			out = append(out, l)
		}
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
