//go:build linux

package agentd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/testkit"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

func TestRegisterHelloHeartbeat(t *testing.T) {
	e := newEnv(t)
	r := e.run()
	s := e.cp.nextSession(t)

	if s.hello.GetProject() != "p" || s.hello.GetAgentName() != "a" {
		t.Fatalf("hello = %v, want p/a", s.hello)
	}
	regs := e.cp.registrations()
	if len(regs) != 1 {
		t.Fatalf("%d Register calls, want 1", len(regs))
	}
	if regs[0].req.GetProject() != "p" || regs[0].req.GetAgentName() != "a" {
		t.Errorf("Register(%v), want p/a", regs[0].req)
	}
	if regs[0].id.ContainerID != testContainerID || regs[0].id.Project != "p" || regs[0].id.Agent != "a" {
		t.Errorf("mTLS identity = %+v", regs[0].id)
	}
	testkit.WaitFor(t, waitLimit, "two heartbeats from the agent", func() bool { return s.heartbeats.Load() >= 2 })
	if n := s.badBeats.Load(); n != 0 {
		t.Errorf("%d heartbeats without sent_at", n)
	}
	e.logs.waitEvent(t, "registered")
	e.logs.waitEvent(t, "session_established")

	r.cancel() // no command: like SIGTERM, exits 0
	if code := r.wait(t); code != ExitOK {
		t.Fatalf("exit code %d, want 0", code)
	}
	<-s.recvDone
	if s.recvErr != io.EOF {
		t.Errorf("session ended with %v, want a clean half-close (EOF)", s.recvErr)
	}
	if len(e.logs.events(t, "session_broken")) != 0 {
		t.Error("a clean close was logged as session_broken")
	}
}

func TestCommandStartsAfterFirstControlMessage(t *testing.T) {
	hold := make(chan struct{})
	e := newEnv(t, func(cp *fakeCP) { cp.hold = hold })
	marker := e.path("started")
	r := e.run("sh", "-c", `touch "$0"; exit 7`, marker)

	s := e.cp.nextSession(t)
	// The agent is up, registered and heartbeating, but has heard nothing.
	testkit.WaitFor(t, waitLimit, "two heartbeats from the agent", func() bool { return s.heartbeats.Load() >= 2 })
	if exists(marker) {
		t.Fatal("the command ran before the first ControlMessage")
	}
	if n := len(e.logs.events(t, "agent_command_started")); n != 0 {
		t.Fatal("agent_command_started logged before the first ControlMessage")
	}
	close(hold)

	if code := r.wait(t); code != 7 {
		t.Fatalf("exit code %d, want the command's 7", code)
	}
	if !exists(marker) {
		t.Fatal("the command did not run")
	}
	est, started, exited := e.logs.index(t, "session_established"), e.logs.index(t, "agent_command_started"), e.logs.index(t, "agent_command_exited")
	if est < 0 || started < est || exited < started {
		t.Errorf("log order session_established=%d agent_command_started=%d agent_command_exited=%d", est, started, exited)
	}
	if ev := e.logs.events(t, "agent_command_exited"); len(ev) != 1 || ev[0]["exit_code"] != float64(7) {
		t.Errorf("agent_command_exited = %v", ev)
	}
}

func TestUserCommandNotFound(t *testing.T) {
	e := newEnv(t)
	r := e.run(filepath.Join(e.dir, "no-such-program"))
	if code := r.wait(t); code != ExitNotFound {
		t.Fatalf("exit code %d, want %d", code, ExitNotFound)
	}
	e.logs.waitEvent(t, "agent_command_failed")
}

func TestRunInitStep(t *testing.T) {
	t.Setenv("CLAWKERD_TEST_BASE", "from-clawkerd")
	e := newEnv(t)
	e.run()
	s := e.cp.nextSession(t)

	t.Run("output and exit code", func(t *testing.T) {
		o := s.do1(t, initStep("c1", uint32(os.Geteuid()), 0, nil, "sh", "-c", "echo out; echo err >&2; exit 3"))
		if string(o.stdout) != "out\n" || string(o.stderr) != "err\n" {
			t.Errorf("stdout %q stderr %q", o.stdout, o.stderr)
		}
		if o.result.GetOk() || o.result.GetExitCode() != 3 || !strings.Contains(o.result.GetError(), "exit status 3") {
			t.Errorf("result = %v, want exit 3, not ok", o.result)
		}
	})
	t.Run("env", func(t *testing.T) {
		o := s.do1(t, initStep("c2", uint32(os.Geteuid()), 0, map[string]string{"CLAWKERD_TEST_VAR": "v1", "CLAWKERD_TEST_BASE": "overridden"},
			"sh", "-c", `printf '%s %s %s' "$CLAWKERD_TEST_VAR" "$CLAWKERD_TEST_BASE" "$PATH"`))
		if !o.result.GetOk() || o.result.GetExitCode() != 0 || o.result.GetError() != "" {
			t.Fatalf("result = %v", o.result)
		}
		if got, want := string(o.stdout), "v1 overridden "+os.Getenv("PATH"); got != want {
			t.Errorf("stdout %q, want %q", got, want)
		}
	})
	t.Run("large output is chunked", func(t *testing.T) {
		o := s.do1(t, initStep("c3", uint32(os.Geteuid()), 0, nil, "head", "-c", "100000", "/dev/zero"))
		if !o.result.GetOk() || len(o.stdout) != 100000 {
			t.Fatalf("result %v, %d bytes", o.result, len(o.stdout))
		}
		for _, c := range o.chunks {
			if len(c.GetData()) > maxChunk || len(c.GetData()) == 0 {
				t.Errorf("chunk of %d bytes", len(c.GetData()))
			}
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var cmds []*agentv1.Command
		for i := range 8 {
			cmds = append(cmds, initStep(fmt.Sprintf("k%d", i), uint32(os.Geteuid()), 0, nil,
				"sh", "-c", fmt.Sprintf("sleep 0.1; echo %d; exit %d", i, i)))
		}
		out := s.do(t, cmds...)
		for i := range 8 {
			o := out[fmt.Sprintf("k%d", i)]
			if string(o.stdout) != fmt.Sprintf("%d\n", i) || o.result.GetExitCode() != int32(i) || o.result.GetOk() != (i == 0) {
				t.Errorf("k%d: stdout %q result %v", i, o.stdout, o.result)
			}
		}
	})
	for _, tc := range []struct {
		name, want string
		cmd        *agentv1.Command
	}{
		{"empty argv", "argv", initStep("e1", 0, 0, nil)},
		{"not found", "no-such", initStep("e2", uint32(os.Geteuid()), 0, nil, filepath.Join(e.dir, "no-such"))},
		{"bad env name", "env", initStep("e3", uint32(os.Geteuid()), 0, map[string]string{"A=B": "x"}, "true")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := s.do1(t, tc.cmd)
			if o.result.GetOk() || o.result.GetExitCode() != -1 || !strings.Contains(o.result.GetError(), tc.want) {
				t.Errorf("result = %v, want not ok, exit -1, error mentioning %q", o.result, tc.want)
			}
		})
	}
	t.Run("unknown kind", func(t *testing.T) {
		o := s.do1(t, &agentv1.Command{Id: "k?"})
		if o.result.GetOk() || !strings.Contains(o.result.GetError(), "unknown command kind") {
			t.Errorf("result = %v", o.result)
		}
	})
	t.Run("uid", func(t *testing.T) {
		if os.Geteuid() == 0 {
			o := s.do1(t, initStep("u1", 65534, 0, nil, "id", "-u"))
			if !o.result.GetOk() || string(o.stdout) != "65534\n" {
				t.Errorf("as uid 65534: stdout %q result %v", o.stdout, o.result)
			}
			o = s.do1(t, initStep("u2", 65534, 0, nil, "id", "-g"))
			if string(o.stdout) != "65534\n" {
				t.Errorf("gid: %q", o.stdout)
			}
			return
		}
		o := s.do1(t, initStep("u1", uint32(os.Geteuid())+1, 0, nil, "id", "-u"))
		if o.result.GetOk() || !strings.Contains(o.result.GetError(), "not root") {
			t.Errorf("result = %v, want a refusal: not root", o.result)
		}
	})
}

func TestRunInitStepTimeout(t *testing.T) {
	e := newEnv(t)
	e.run()
	s := e.cp.nextSession(t)
	start := time.Now()
	// The background sleep is in the step's process group: it must die too.
	o := s.do1(t, initStep("t1", uint32(os.Geteuid()), 300*time.Millisecond, nil, "sh", "-c", "sleep 60 & echo $!; wait"))
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("took %s", took)
	}
	if o.result.GetOk() || o.result.GetExitCode() != -1 || !strings.Contains(o.result.GetError(), "timeout") {
		t.Fatalf("result = %v, want a timeout (exit -1)", o.result)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(o.stdout)))
	if err != nil {
		t.Fatalf("stdout %q", o.stdout)
	}
	testkit.WaitFor(t, waitLimit, "the background sleep to be killed", func() bool { return dead(pid) })
}

func TestSetupMCP(t *testing.T) {
	e := newEnv(t)
	e.run()
	s := e.cp.nextSession(t)
	dir := filepath.Join(e.cfg.Home, ".clawker", "mcp")

	check := func(t *testing.T, name, want string) {
		t.Helper()
		path := filepath.Join(dir, name+".json")
		if got := readFile(t, path); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 {
			t.Errorf("file mode %v, want 0600", fi.Mode())
		}
		for _, d := range []string{dir, filepath.Dir(dir)} {
			if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("%s: %v mode %v, want 0700", d, err, fi.Mode())
			}
		}
		entries, _ := os.ReadDir(dir)
		for _, en := range entries {
			if strings.Contains(en.Name(), ".tmp-") {
				t.Errorf("temp file left: %s", en.Name())
			}
		}
	}

	t.Run("write", func(t *testing.T) {
		o := s.do1(t, setupMCP("m1", "github", `{"command":"gh-mcp","args":["serve"]}`))
		if !o.result.GetOk() || o.result.GetError() != "" {
			t.Fatalf("result = %v", o.result)
		}
		check(t, "github", `{"command":"gh-mcp","args":["serve"]}`)
	})
	t.Run("replace and tighten", func(t *testing.T) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		o := s.do1(t, setupMCP("m2", "github", `{"command":"v2"}`))
		if !o.result.GetOk() {
			t.Fatalf("result = %v", o.result)
		}
		check(t, "github", `{"command":"v2"}`)
	})
	for i, tc := range []struct{ name, config, field string }{
		{"", `{}`, "name"},
		{"Upper", `{}`, "name"},
		{"-lead", `{}`, "name"},
		{"a/b", `{}`, "name"},
		{"../x", `{}`, "name"},
		{"a.b", `{}`, "name"},
		{strings.Repeat("a", 64), `{}`, "name"},
		{"badjson", `{"x":`, "config_json"},
		{"empty", ``, "config_json"},
	} {
		t.Run(fmt.Sprintf("reject %q %q", tc.name, tc.config), func(t *testing.T) {
			o := s.do1(t, setupMCP(fmt.Sprintf("bad%d", i), tc.name, tc.config))
			if o.result.GetOk() || !strings.Contains(o.result.GetError(), tc.field) {
				t.Errorf("result = %v, want an error naming %s", o.result, tc.field)
			}
			if tc.name != "" && exists(filepath.Join(dir, tc.name+".json")) {
				t.Error("file written despite the error")
			}
		})
	}
	t.Run("symlinked dir is refused", func(t *testing.T) {
		outside := e.path("outside")
		if err := os.Mkdir(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, dir); err != nil {
			t.Fatal(err)
		}
		o := s.do1(t, setupMCP("m3", "evil", `{}`))
		if o.result.GetOk() {
			t.Error("wrote through a symlink")
		}
		if entries, _ := os.ReadDir(outside); len(entries) != 0 {
			t.Errorf("files outside home: %v", entries)
		}
		if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o755 {
			t.Errorf("outside dir mode changed to %v", fi.Mode())
		}
		os.Remove(dir)
	})
	t.Run("owned by home's owner", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root")
		}
		if err := os.Chown(e.cfg.Home, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		o := s.do1(t, setupMCP("m4", "owned", `{}`))
		if !o.result.GetOk() {
			t.Fatalf("result = %v", o.result)
		}
		for _, p := range []string{filepath.Dir(dir), dir, filepath.Join(dir, "owned.json")} {
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
				t.Errorf("%s owned by %d:%d, want 65534:65534", p, st.Uid, st.Gid)
			}
		}
	})
}

func TestShutdown(t *testing.T) {
	e := newEnv(t)
	ready, term := e.path("ready"), e.path("term")
	r := e.run("sh", "-c", `trap 'echo term > "$1"; exit 0' TERM; touch "$0"; while :; do sleep 0.05; done`, ready, term)
	s := e.cp.nextSession(t)
	testkit.WaitFor(t, waitLimit, "the command to start", func() bool { return exists(ready) })

	o := s.do1(t, shutdownCmd("s1", 10*time.Second))
	if !o.result.GetOk() {
		t.Fatalf("result = %v", o.result)
	}
	if code := r.wait(t); code != ExitOK {
		t.Fatalf("exit code %d, want 0", code)
	}
	if got := readFile(t, term); got != "term\n" {
		t.Errorf("the command did not get SIGTERM (marker %q)", got)
	}
	<-s.recvDone
	if s.recvErr != io.EOF {
		t.Errorf("stream ended with %v, want a clean close", s.recvErr)
	}
	e.logs.waitEvent(t, "shutdown")
	if n := len(e.logs.events(t, "agent_command_exited")); n != 0 {
		t.Error("a stop by Shutdown was reported as the command exiting by itself")
	}
}

func TestShutdownKillsAfterGrace(t *testing.T) {
	e := newEnv(t)
	ready, pidFile := e.path("ready"), e.path("pid")
	// The ignored SIGTERM is inherited by the exec'd sleep.
	r := e.run("sh", "-c", `trap '' TERM; echo $$ > "$1"; touch "$0"; exec sleep 300`, ready, pidFile)
	s := e.cp.nextSession(t)
	testkit.WaitFor(t, waitLimit, "the command to start", func() bool { return exists(ready) })
	pid := readPID(t, pidFile)

	grace := 300 * time.Millisecond
	start := time.Now()
	o := s.do1(t, shutdownCmd("s1", grace))
	if !o.result.GetOk() {
		t.Fatalf("result = %v", o.result)
	}
	if took := time.Since(start); took < grace {
		t.Errorf("answered after %s, before the grace of %s", took, grace)
	}
	if code := r.wait(t); code != ExitOK {
		t.Fatalf("exit code %d, want 0", code)
	}
	if !dead(pid) {
		t.Error("the command survived")
	}
	e.logs.waitEvent(t, "agent_command_killed")
}

func TestReconnectAfterServerRestart(t *testing.T) {
	e := newEnv(t)
	starts, pidFile := e.path("starts"), e.path("pid")
	r := e.run("sh", "-c", `echo x >> "$0"; echo $$ > "$1"; exec sleep 300`, starts, pidFile)
	s1 := e.cp.nextSession(t)
	pid := readPID(t, pidFile)

	e.cp.stop()
	<-s1.done
	e.logs.waitEvent(t, "session_broken")
	e.logs.waitEvent(t, "register_retry") // it kept trying while the CP was down
	e.logs.waitEvent(t, "reconnecting")
	e.cp.start()

	s2 := e.cp.nextSession(t)
	if s2.hello.GetProject() != "p" || s2.hello.GetAgentName() != "a" {
		t.Errorf("second hello = %v", s2.hello)
	}
	regs := e.cp.registrations()
	if len(regs) < 2 {
		t.Fatalf("%d Register calls, want a new one after the restart", len(regs))
	}
	if st, _ := procState(pid); st == 0 || st == 'Z' {
		t.Fatalf("the command (pid %d) did not survive the reconnect", pid)
	}
	if got := readFile(t, starts); got != "x\n" {
		t.Errorf("the command was started %d times", strings.Count(got, "x"))
	}
	for _, ev := range e.logs.events(t, "reconnecting") {
		if _, ok := ev["attempt"]; !ok || ev["delay"] == nil {
			t.Errorf("reconnecting without attempt/delay: %v", ev)
		}
	}

	if o := s2.do1(t, shutdownCmd("s1", 10*time.Second)); !o.result.GetOk() {
		t.Fatalf("shutdown result = %v", o.result)
	}
	if code := r.wait(t); code != ExitOK {
		t.Fatalf("exit code %d", code)
	}
	if !dead(pid) {
		t.Error("the command outlived the shutdown")
	}
}

func TestRegisterRefused(t *testing.T) {
	for _, code := range []codes.Code{codes.PermissionDenied, codes.InvalidArgument} {
		t.Run(code.String(), func(t *testing.T) {
			e := newEnv(t, func(cp *fakeCP) {
				cp.registerErr = func(int) error { return status.Error(code, "certificate is for another agent (test)") }
			})
			marker := e.path("ran")
			r := e.run("sh", "-c", `touch "$0"`, marker)
			if got := r.wait(t); got != ExitRefused {
				t.Fatalf("exit code %d, want %d", got, ExitRefused)
			}
			if n := len(e.cp.registrations()); n != 1 {
				t.Errorf("%d Register calls, want exactly 1 (no retry)", n)
			}
			if exists(marker) {
				t.Error("the command ran without a session")
			}
			ev := e.logs.waitEvent(t, "register_failed")
			if !strings.Contains(fmt.Sprint(ev["error"]), "certificate is for another agent (test)") || ev["code"] != code.String() {
				t.Errorf("register_failed = %v", ev)
			}
		})
	}
}

func TestRegisterRetriesUnavailable(t *testing.T) {
	e := newEnv(t, func(cp *fakeCP) {
		cp.registerErr = func(n int) error {
			if n <= 2 {
				return status.Error(codes.Unavailable, "registry unavailable, retry")
			}
			return nil
		}
	})
	e.run()
	e.cp.nextSession(t)
	if n := len(e.cp.registrations()); n != 3 {
		t.Errorf("%d Register calls, want 3", n)
	}
	if n := len(e.logs.events(t, "register_retry")); n != 2 {
		t.Errorf("%d register_retry lines, want 2", n)
	}
	ev := e.logs.events(t, "reconnecting")
	if len(ev) < 2 || ev[0]["attempt"] != float64(1) || ev[1]["attempt"] != float64(2) {
		t.Errorf("reconnecting = %v, want attempts 1 and 2", ev)
	}
}

func TestBrokenSessionDetected(t *testing.T) {
	e := newEnv(t, func(cp *fakeCP) { cp.silent = true })
	e.cfg.Heartbeat = 100 * time.Millisecond
	e.run()
	s1 := e.cp.nextSession(t)
	// The CP answered once and then went quiet while keeping the stream open.
	select {
	case <-s1.done:
	case <-time.After(waitLimit):
		t.Fatal("the agent kept a silent session open")
	}
	s2 := e.cp.nextSession(t)
	if s2.hello.GetAgentName() != "a" {
		t.Errorf("hello = %v", s2.hello)
	}
	if n := len(e.cp.registrations()); n < 2 {
		t.Errorf("%d Register calls, want a re-Register", n)
	}
	ev := e.logs.waitEvent(t, "session_broken")
	if !strings.Contains(fmt.Sprint(ev["error"]), "nothing received") {
		t.Errorf("session_broken = %v", ev)
	}
}

func TestSignals(t *testing.T) {
	t.Run("SIGTERM is forwarded, exit with the command's code", func(t *testing.T) {
		e := newEnv(t)
		sigs := make(chan os.Signal, 1)
		e.cfg.Signals = sigs
		ready, hups := e.path("ready"), e.path("hups")
		r := e.run("sh", "-c", `trap 'echo hup >> "$1"' HUP; trap 'exit 5' TERM; touch "$0"; while :; do sleep 0.05; done`, ready, hups)
		testkit.WaitFor(t, waitLimit, "the command to start", func() bool { return exists(ready) })
		sigs <- syscall.SIGHUP
		testkit.WaitFor(t, waitLimit, "the forwarded SIGHUP", func() bool { return exists(hups) })
		sigs <- syscall.SIGTERM
		if code := r.wait(t); code != 5 {
			t.Fatalf("exit code %d, want 5", code)
		}
	})
	t.Run("cancel kills with SIGTERM", func(t *testing.T) {
		e := newEnv(t)
		ready := e.path("ready")
		r := e.run("sh", "-c", `touch "$0"; exec sleep 300`, ready)
		testkit.WaitFor(t, waitLimit, "the command to start", func() bool { return exists(ready) })
		r.cancel()
		if code := r.wait(t); code != 128+int(syscall.SIGTERM) {
			t.Fatalf("exit code %d, want %d", code, 128+int(syscall.SIGTERM))
		}
	})
	t.Run("before the session, exit 0 without starting", func(t *testing.T) {
		e := newEnv(t, func(cp *fakeCP) { cp.hold = make(chan struct{}) })
		marker := e.path("ran")
		r := e.run("sh", "-c", `touch "$0"`, marker)
		e.cp.nextSession(t)
		r.cancel()
		if code := r.wait(t); code != ExitOK {
			t.Fatalf("exit code %d", code)
		}
		if exists(marker) {
			t.Error("the command ran")
		}
	})
}

func TestBackoffDelay(t *testing.T) {
	maxDelay := 10 * time.Second
	for n := 1; n <= 12; n++ {
		ceiling := min(initialBackoff<<(n-1), maxDelay)
		var sum time.Duration
		for range 200 {
			d := backoffDelay(n, maxDelay)
			if d < 0 || d > ceiling {
				t.Fatalf("attempt %d: %s outside [0, %s]", n, d, ceiling)
			}
			sum += d
		}
		// Full jitter: the mean sits near half the ceiling.
		if mean := sum / 200; mean < ceiling/4 || mean > ceiling*3/4 {
			t.Errorf("attempt %d: mean %s for ceiling %s", n, mean, ceiling)
		}
	}
	if d := backoffDelay(1, 50*time.Millisecond); d > 50*time.Millisecond {
		t.Errorf("cap below the initial delay ignored: %s", d)
	}
}

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "connection refused"), true},
		{status.Error(codes.DeadlineExceeded, "slow"), true},
		{status.Error(codes.Canceled, "transport closing"), true},
		{errors.New("not a status"), true},
		{status.Error(codes.PermissionDenied, "no"), false},
		{status.Error(codes.InvalidArgument, "bad"), false},
		{status.Error(codes.Unauthenticated, "who"), false},
		{status.Error(codes.Internal, "bug"), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
