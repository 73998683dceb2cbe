//go:build linux

package agentd

import (
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/testkit"
)

func TestParseArgsRequireEnforced(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want bool
	}{
		{"default", nil, nil, false},
		{"bare flag", []string{"--require-enforced"}, nil, true},
		{"flag=false", []string{"--require-enforced=false"}, nil, false},
		{"env 1", nil, map[string]string{"CLAWKERD_REQUIRE_ENFORCED": "1"}, true},
		{"env true", nil, map[string]string{"CLAWKERD_REQUIRE_ENFORCED": "true"}, true},
		{"env 0", nil, map[string]string{"CLAWKERD_REQUIRE_ENFORCED": "0"}, false},
		{"flag wins over env", []string{"--require-enforced=false"}, map[string]string{"CLAWKERD_REQUIRE_ENFORCED": "1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append(append([]string{}, fullArgs...), tc.args...), "--", "sleep", "1")
			cfg, argv, err := ParseArgs(args, envMap(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.RequireEnforced != tc.want {
				t.Errorf("RequireEnforced = %v, want %v", cfg.RequireEnforced, tc.want)
			}
			if strings.Join(argv, " ") != "sleep 1" {
				t.Errorf("argv = %q: the bare flag took an argument", argv)
			}
		})
	}
	if u := Usage(); !strings.Contains(u, "--require-enforced") || !strings.Contains(u, "CLAWKERD_REQUIRE_ENFORCED, default false") {
		t.Errorf("usage lacks --require-enforced:\n%s", u)
	}
}

// Register answers enforced=false twice, then true: the Session opens and
// the command starts only after the third Register.
func TestRequireEnforcedWaitsForEnforcement(t *testing.T) {
	var marker string
	var ranEarly atomic.Bool
	e := newEnv(t, func(cp *fakeCP) {
		cp.enforced = func(n int) bool {
			if exists(marker) {
				ranEarly.Store(true)
			}
			return n >= 3
		}
	})
	marker = e.path("started")
	e.cfg.RequireEnforced = true
	r := e.run("sh", "-c", `touch "$0"; exit 4`, marker)

	s := e.cp.nextSession(t)
	if s.registers != 3 {
		t.Errorf("the Session opened after %d Register calls, want 3 (the first enforced answer)", s.registers)
	}
	if code := r.wait(t); code != 4 {
		t.Fatalf("exit code %d, want the command's 4", code)
	}
	if ranEarly.Load() {
		t.Error("the command ran before a Register answered enforced=true")
	}
	if n := len(e.cp.registrations()); n != 3 {
		t.Errorf("%d Register calls, want 3", n)
	}
	waits := e.logs.events(t, "waiting_for_enforcement")
	if len(waits) != 2 || waits[0]["attempt"] != float64(1) || waits[1]["attempt"] != float64(2) {
		t.Errorf("waiting_for_enforcement = %v, want attempts 1 and 2", waits)
	}
	lines := e.logs.lines(t)
	lastWait := -1
	for i, m := range lines {
		if m["event"] == "waiting_for_enforcement" {
			lastWait = i
		}
	}
	est, started := e.logs.index(t, "session_established"), e.logs.index(t, "agent_command_started")
	if lastWait < 0 || est < lastWait || started < est {
		t.Errorf("log order: last waiting_for_enforcement=%d session_established=%d agent_command_started=%d", lastWait, est, started)
	}
	if n := len(e.logs.events(t, "session_broken")); n != 0 {
		t.Errorf("%d session_broken lines: waiting is not a broken session", n)
	}
}

// The CP never says enforced: no Session, no command, and a stop request
// still ends clawkerd cleanly.
func TestRequireEnforcedNeverEnforced(t *testing.T) {
	for _, how := range []string{"SIGTERM", "cancel"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t) // enforced is always false
			e.cfg.RequireEnforced = true
			sigs := make(chan os.Signal, 1)
			e.cfg.Signals = sigs
			marker := e.path("ran")
			r := e.run("sh", "-c", `touch "$0"`, marker)

			testkit.WaitFor(t, waitLimit, "three waiting_for_enforcement lines", func() bool {
				return len(e.logs.events(t, "waiting_for_enforcement")) >= 3
			})
			for i, ev := range e.logs.events(t, "waiting_for_enforcement")[:3] {
				if ev["attempt"] != float64(i+1) {
					t.Errorf("waiting_for_enforcement #%d: attempt %v", i+1, ev["attempt"])
				}
			}
			start := time.Now()
			if how == "SIGTERM" {
				sigs <- syscall.SIGTERM
			} else {
				r.cancel()
			}
			if code := r.wait(t); code != ExitOK {
				t.Fatalf("exit code %d, want 0", code)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %s to stop", took)
			}
			if exists(marker) {
				t.Error("the command ran although no Register answered enforced=true")
			}
			select {
			case s := <-e.cp.sessions:
				t.Errorf("a Session opened after %d Register calls", s.registers)
			default:
			}
			if n := len(e.logs.events(t, "agent_command_started")); n != 0 {
				t.Error("agent_command_started logged")
			}
			e.logs.waitEvent(t, "clawkerd_exiting")
		})
	}
}

// Without --require-enforced an enforced=false answer changes nothing.
func TestEnforcedIgnoredWithoutRequireEnforced(t *testing.T) {
	e := newEnv(t) // enforced is always false
	marker := e.path("ran")
	r := e.run("sh", "-c", `touch "$0"`, marker)
	if code := r.wait(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !exists(marker) {
		t.Error("the command did not run")
	}
	if n := len(e.cp.registrations()); n != 1 {
		t.Errorf("%d Register calls, want 1", n)
	}
	if n := len(e.logs.events(t, "waiting_for_enforcement")); n != 0 {
		t.Errorf("%d waiting_for_enforcement lines without the flag", n)
	}
}
