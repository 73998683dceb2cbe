package main_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/cptest"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// Load of TestThousandSessions.
const (
	loadSessions = 1000
	// loadHold is how long the Sessions are held once all are open.
	loadHold = 10 * time.Second
	// loadCPHeartbeat is the CP's heartbeat interval; the agents send theirs
	// every second, well inside the CP's silence bound (3 intervals).
	loadCPHeartbeat  = 2 * time.Second
	loadAgentBeat    = time.Second
	loadSetupWorkers = 32
)

func kib(t *testing.T, pid int, field string) int64 {
	t.Helper()
	v, err := cptest.ProcStatusKB(pid, field)
	if err != nil {
		t.Fatalf("reading %s of pid %d: %v", field, pid, err)
	}
	return v
}

// TestThousandSessions: one CP holds 1,000 concurrent Sessions (each agent
// with its own certificate and connection, registered first) while they
// exchange heartbeats; ListAgents reports all of them connected and
// /debug/actors has one session actor each. The CP's resident memory is
// logged before and during. A SIGTERM with every Session open then drains
// cleanly: each stream is ended and the CP exits 0.
//
// It is deliberately not parallel: it runs before the parallel tests of the
// package start, so its memory figures and its heartbeat deadlines are not
// disturbed by a dozen other control planes sharing the CPU.
func TestThousandSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("holds 1,000 Sessions against a real clawker-cp for about 20s; skipped under -short")
	}
	// Each Session is one TCP connection: one descriptor in this process
	// and one in the CP (which inherits this limit), plus headroom.
	cptest.RaiseNoFile(t, 2*loadSessions+1024)

	cp := startIdentityCP(t, fmt.Sprintf("control_plane:\n  sessions:\n    heartbeat: %s\n    last_seen_flush: 1s\n", loadCPHeartbeat))
	pid := cp.p.Pid()
	rssIdle, fdIdle := kib(t, pid, "VmRSS"), 0
	if n, err := cptest.CountFDs(pid); err == nil {
		fdIdle = n
	}

	agents := make([]*testAgent, loadSessions)
	wantNames := make([]string, loadSessions)
	for i := range agents {
		agents[i] = cp.newAgent(t, fmt.Sprintf("load-%d", i%10), fmt.Sprintf("agent-%04d", i))
		wantNames[i] = agents[i].name()
	}

	// Register, then open the Session, on each agent's own connection.
	sessions := make([]*agentSession, loadSessions)
	errs := make([]error, loadSessions)
	t.Cleanup(func() {
		for _, s := range sessions {
			if s != nil {
				s.cancel()
			}
		}
	})
	setupStart := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	for range loadSetupWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				a := agents[i]
				if _, err := a.tryRegister(); err != nil {
					errs[i] = fmt.Errorf("%s: Register: %w", a.name(), err)
					continue
				}
				s, err := openSession(a.client, &agentv1.Hello{Project: a.id.Project, AgentName: a.id.Agent}, loadAgentBeat, callTimeout)
				if err != nil {
					errs[i] = fmt.Errorf("%s: Session: %w", a.name(), err)
					continue
				}
				sessions[i] = s
			}
		}()
	}
	for i := range agents {
		work <- i
	}
	close(work)
	wg.Wait()
	setup := time.Since(setupStart)
	var bad []string
	for _, err := range errs {
		if err != nil {
			bad = append(bad, err.Error())
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%d of %d agents could not register and open a Session; first: %q\nstderr tail:\n%s",
			len(bad), loadSessions, bad[:min(len(bad), 5)], cp.p.Tail(cptest.TailLines))
	}
	t.Logf("%d agents registered and opened their Session in %s (%.0f/s, %d concurrent clients)",
		loadSessions, setup.Round(time.Millisecond), float64(loadSessions)/setup.Seconds(), loadSetupWorkers)

	// Hold them, sampling the CP's view and its memory.
	admin := cp.admin(t)
	heartbeatsAtOpen := make([]int64, loadSessions)
	for i, s := range sessions {
		heartbeatsAtOpen[i] = s.heartbeats.Load()
	}
	holdEnd := time.Now().Add(loadHold)
	var rssPeak int64
	sawAll := false
	for time.Now().Before(holdEnd) {
		rssPeak = max(rssPeak, kib(t, pid, "VmRSS"))
		connected := 0
		for _, a := range cp.listAgents(t, admin) {
			if a.GetConnected() {
				connected++
			}
		}
		kids := sessionChildren(t, cp.p)
		sawAll = sawAll || (connected == loadSessions && len(kids) == loadSessions)
		if connected != loadSessions || len(kids) != loadSessions {
			t.Logf("during the hold: %d connected, %d session actors", connected, len(kids))
		}
		time.Sleep(min(2*time.Second, time.Until(holdEnd)))
	}
	rssHeld := kib(t, pid, "VmRSS")
	rssPeak = max(rssPeak, rssHeld)
	hwm := kib(t, pid, "VmHWM")
	fdHeld, _ := cptest.CountFDs(pid)

	// Every Session is still up and has been hearing the CP.
	var dead, deaf []string
	minBeats := int64(loadHold/loadCPHeartbeat) / 2
	for i, s := range sessions {
		if !s.alive() {
			dead = append(dead, fmt.Sprintf("%s: %v", agents[i].name(), s.recvErr))
			continue
		}
		if got := s.heartbeats.Load() - heartbeatsAtOpen[i]; got < minBeats {
			deaf = append(deaf, fmt.Sprintf("%s: %d", agents[i].name(), got))
		}
		if heartbeatsAtOpen[i] < 1 {
			deaf = append(deaf, agents[i].name()+": no first heartbeat")
		}
	}
	if len(dead) > 0 {
		t.Errorf("%d Sessions ended during the hold; first: %q", len(dead), dead[:min(len(dead), 5)])
	}
	if len(deaf) > 0 {
		t.Errorf("%d agents got fewer than %d CP heartbeats during the %s hold; first: %q", len(deaf), minBeats, loadHold, deaf[:min(len(deaf), 5)])
	}

	list := cp.listAgents(t, admin)
	connected, seen := 0, 0
	for _, a := range list {
		if a.GetConnected() {
			connected++
		}
		if a.GetLastSeen().AsTime().After(a.GetRegisteredAt().AsTime()) {
			seen++
		}
	}
	if len(list) != loadSessions || connected != loadSessions {
		t.Errorf("ListAgents lists %d agents, %d connected; want %d, all connected", len(list), connected, loadSessions)
	}
	if seen != loadSessions {
		t.Errorf("%d of %d agents have a last_seen past their registration; heartbeats should have moved all of them", seen, loadSessions)
	}
	kids := sessionChildren(t, cp.p)
	slices.Sort(kids)
	slices.Sort(wantNames)
	if !slices.Equal(kids, wantNames) {
		t.Errorf("%s has %d children, want one per agent (%d)", sessionsPath, len(kids), loadSessions)
	}
	if !sawAll {
		t.Errorf("no sample during the hold saw all %d agents connected with a session actor each", loadSessions)
	}

	const mib = 1024.0
	t.Logf("CP (pid %d) VmRSS: %.1f MiB idle, %.1f MiB holding %d Sessions (peak sample %.1f MiB, VmHWM %.1f MiB): %.1f KiB per Session",
		pid, float64(rssIdle)/mib, float64(rssHeld)/mib, loadSessions, float64(rssPeak)/mib, float64(hwm)/mib,
		float64(rssHeld-rssIdle)/loadSessions)
	t.Logf("CP open descriptors: %d idle, %d holding %d Sessions", fdIdle, fdHeld, loadSessions)
	if self, err := cptest.ProcStatusKB(syscall.Getpid(), "VmRSS"); err == nil {
		t.Logf("this test process (the 1,000 clients) VmRSS: %.1f MiB", float64(self)/mib)
	}

	// SIGTERM with every Session open: grpc_stop ends them all, then the
	// CP exits 0.
	drainStart := time.Now()
	if err := cp.p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := cp.p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("exit code %d after SIGTERM with %d Sessions open, want 0", code, loadSessions)
	}
	t.Logf("SIGTERM to exit with %d Sessions open: %s", loadSessions, time.Since(drainStart).Round(time.Millisecond))
	steps := checkDrain(t, cp.p)
	checkDrainSucceeded(t, steps)
	for _, s := range steps {
		if s["step"] == "grpc_stop" {
			if d, _ := s["detail"].(string); !strings.Contains(d, fmt.Sprintf("ended %d session(s)", loadSessions)) || strings.Contains(d, "forced") {
				t.Errorf("grpc_stop detail %q, want all %d Sessions ended without forcing", d, loadSessions)
			}
		}
	}
	var open []string
	deadline := time.Now().Add(10 * time.Second)
	for i, s := range sessions {
		if ok, _ := waitClosed(s, time.Until(deadline)); !ok {
			open = append(open, agents[i].name())
		}
	}
	if len(open) > 0 {
		t.Errorf("%d Sessions still open on the client side after the CP exited; first: %q", len(open), open[:min(len(open), 5)])
	}
	if n := len(cp.p.Events("session_ended")); n != loadSessions {
		t.Errorf("%d session_ended lines, want %d", n, loadSessions)
	}
}
