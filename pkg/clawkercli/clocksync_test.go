package clawkercli_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// The exact text `clawker run` prints when the gate gives up.
const clockSyncFailure = "clawker: starting container: bootstrapping services: ensuring control plane is running: cp clock sync deadline exceeded\n"

// timeFunc is a TimeSource answering with now(), or err.
type timeFunc struct {
	mu    sync.Mutex
	calls int
	now   func(call int) (time.Time, error)
}

func (f *timeFunc) GetSystemTime(context.Context, *adminv1.GetSystemTimeRequest, ...grpc.CallOption) (*adminv1.GetSystemTimeResponse, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	t, err := f.now(n)
	if err != nil {
		return nil, err
	}
	return &adminv1.GetSystemTimeResponse{Now: timestamppb.New(t)}, nil
}

func (f *timeFunc) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// lagging is a clock lag behind the real one until catchUp has passed
// since start (never when catchUp is 0).
func lagging(lag, catchUp time.Duration) func() time.Time {
	start := time.Now()
	return func() time.Time {
		now := time.Now()
		if catchUp > 0 && now.Sub(start) >= catchUp {
			return now
		}
		return now.Add(-lag)
	}
}

// recReporter records what the gate shows.
type recReporter struct {
	mu    sync.Mutex
	lines []string
}

func (r *recReporter) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, s)
}
func (r *recReporter) Begin(step string) { r.add("begin " + step) }
func (r *recReporter) End(detail string, err error) {
	r.add(fmt.Sprintf("end %s %v", detail, err))
}
func (r *recReporter) Note(msg string) { r.add("note " + msg) }
func (r *recReporter) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lines)
}

func TestClockGate(t *testing.T) {
	t.Parallel()
	fast := func(deadline time.Duration) *clawkercli.ClockGate {
		return &clawkercli.ClockGate{Deadline: deadline, Interval: 20 * time.Millisecond}
	}

	t.Run("a correct clock passes on the first poll", func(t *testing.T) {
		t.Parallel()
		src := &timeFunc{now: func(int) (time.Time, error) { return time.Now(), nil }}
		rep := &recReporter{}
		start := time.Now()
		if err := fast(5*time.Second).Wait(t.Context(), src, rep); err != nil {
			t.Fatal(err)
		}
		if src.count() != 1 || time.Since(start) > time.Second || len(rep.all()) != 0 {
			t.Errorf("%d polls in %s, reported %q", src.count(), time.Since(start), rep.all())
		}
	})

	t.Run("zero leeway", func(t *testing.T) {
		t.Parallel()
		// The host instant is fixed; the CP answers exactly it (passes) or
		// one nanosecond before it (never passes).
		host := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
		g := fast(200 * time.Millisecond)
		g.HostNow = func() time.Time { return host }
		if err := g.Wait(t.Context(), &timeFunc{now: func(int) (time.Time, error) { return host, nil }}, nil); err != nil {
			t.Errorf("equal clocks: %v", err)
		}
		src := &timeFunc{now: func(int) (time.Time, error) { return host.Add(-time.Nanosecond), nil }}
		if err := g.Wait(t.Context(), src, nil); !errors.Is(err, clawkercli.ErrClockSyncDeadline) {
			t.Errorf("1ns behind: %v", err)
		}
		if src.count() < 3 {
			t.Errorf("%d polls in 200ms at a 20ms interval", src.count())
		}
	})

	t.Run("a lagging clock that catches up passes", func(t *testing.T) {
		t.Parallel()
		clock := lagging(5*time.Second, 600*time.Millisecond)
		src := &timeFunc{now: func(int) (time.Time, error) { return clock(), nil }}
		rep := &recReporter{}
		g := &clawkercli.ClockGate{Deadline: 10 * time.Second} // the default interval
		start := time.Now()
		if err := g.Wait(t.Context(), src, rep); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if took < 500*time.Millisecond || took > 3*time.Second {
			t.Errorf("passed after %s, want just after the 600ms catch-up", took)
		}
		// Every ~250ms: a handful of polls, not a busy loop.
		if n := src.count(); n < 3 || n > 6 {
			t.Errorf("%d polls in %s", n, took)
		}
		lines := rep.all()
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "begin waiting for the control plane's clock (5s behind the host's)") ||
			!strings.HasPrefix(lines[1], "end control plane clock caught up") {
			t.Errorf("reported %q", lines)
		}
	})

	t.Run("a clock that never catches up fails at the deadline", func(t *testing.T) {
		t.Parallel()
		clock := lagging(5*time.Second, 0)
		src := &timeFunc{now: func(int) (time.Time, error) { return clock(), nil }}
		start := time.Now()
		err := fast(400*time.Millisecond).Wait(t.Context(), src, nil)
		took := time.Since(start)
		if err == nil || err.Error() != "cp clock sync deadline exceeded" || !errors.Is(err, clawkercli.ErrClockSyncDeadline) {
			t.Fatalf("err = %v", err)
		}
		if took < 400*time.Millisecond || took > 2*time.Second {
			t.Errorf("gave up after %s, want the 400ms deadline", took)
		}
	})

	t.Run("transient errors are polled through", func(t *testing.T) {
		t.Parallel()
		src := &timeFunc{now: func(n int) (time.Time, error) {
			if n <= 2 {
				return time.Time{}, status.Error(codes.Unavailable, "connection refused")
			}
			return time.Now(), nil
		}}
		if err := fast(5*time.Second).Wait(t.Context(), src, nil); err != nil || src.count() != 3 {
			t.Errorf("err %v after %d polls", err, src.count())
		}
	})

	t.Run("failing until the deadline names the last error", func(t *testing.T) {
		t.Parallel()
		src := &timeFunc{now: func(int) (time.Time, error) {
			return time.Time{}, status.Error(codes.Unavailable, "connection refused")
		}}
		err := fast(200*time.Millisecond).Wait(t.Context(), src, nil)
		if !errors.Is(err, clawkercli.ErrClockSyncDeadline) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("a permanent error fails at once", func(t *testing.T) {
		t.Parallel()
		src := &timeFunc{now: func(int) (time.Time, error) {
			return time.Time{}, status.Error(codes.Unimplemented, "unknown method GetSystemTime")
		}}
		err := fast(5*time.Second).Wait(t.Context(), src, nil)
		if err == nil || errors.Is(err, clawkercli.ErrClockSyncDeadline) || status.Code(errors.Unwrap(err)) != codes.Unimplemented || src.count() != 1 {
			t.Errorf("err = %v after %d polls", err, src.count())
		}
	})

	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		clock := lagging(time.Second, 0)
		src := &timeFunc{now: func(int) (time.Time, error) { return clock(), nil }}
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		if err := fast(10*time.Second).Wait(ctx, src, nil); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, clawkercli.ErrClockSyncDeadline) {
			t.Errorf("err = %v, want the caller's context error", err)
		}
	})
}

// skewedAdmin is an AdminService over the CLI's real mTLS whose
// GetSystemTime answers with clock.
type skewedAdmin struct {
	adminv1.UnimplementedAdminServiceServer
	clock func() time.Time
	mu    sync.Mutex
	calls int
}

func (s *skewedAdmin) GetSystemTime(context.Context, *adminv1.GetSystemTimeRequest) (*adminv1.GetSystemTimeResponse, error) {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	return &adminv1.GetSystemTimeResponse{Now: timestamppb.New(s.clock())}, nil
}

func (s *skewedAdmin) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func serveSkewed(t *testing.T, m *certs.Material, clock func() time.Time) (*skewedAdmin, int) {
	t.Helper()
	cfg, err := m.ServerTLSConfig(certs.CLICommonName)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &skewedAdmin{clock: clock}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	adminv1.RegisterAdminServiceServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return s, lis.Addr().(*net.TCPAddr).Port
}

// The gate through adminclient and real mTLS gRPC.
func TestClockGateOverGRPC(t *testing.T) {
	t.Parallel()
	h := adminclienttest.NewHome(t)
	m := h.EnsureAuth(t)
	for _, c := range []struct {
		name    string
		clock   func() time.Time
		wantErr bool
	}{
		{"correct", time.Now, false},
		{"catches up", lagging(5*time.Second, 500*time.Millisecond), false},
		{"never", lagging(5*time.Second, 0), true},
	} {
		srv, port := serveSkewed(t, m, c.clock)
		h.SetAdminPort(t, port)
		cl, err := adminclient.Dial(t.Context(), h.Paths(t), h.Settings(t))
		if err != nil {
			t.Fatal(err)
		}
		before := srv.count() // Dial's own probe
		err = (&clawkercli.ClockGate{Deadline: 1500 * time.Millisecond}).Wait(t.Context(), cl, nil)
		cl.Close()
		if c.wantErr != (err != nil) || err != nil && err.Error() != "cp clock sync deadline exceeded" {
			t.Errorf("%s: err = %v", c.name, err)
		}
		if polls := srv.count() - before; c.name == "correct" && polls != 1 {
			t.Errorf("%s: %d polls", c.name, polls)
		}
	}
}

// runEnvWithAdmin is runEnv with settings pointing at an AdminService
// whose clock is clock, and a gate with a short deadline.
func runEnvWithAdmin(t *testing.T, clock func() time.Time, firewall bool) (clawkercli.Env, *agentDocker, *skewedAdmin, *strings.Builder, *strings.Builder) {
	t.Helper()
	env, d, _, stdout, stderr := runEnv(t)
	h := adminclienttest.Home{ConfigHome: env.Getenv("XDG_CONFIG_HOME"), DataHome: env.Getenv("XDG_DATA_HOME"), StateHome: env.Getenv("XDG_STATE_HOME")}
	m, err := certs.Load(h.Paths(t).AuthDir)
	if err != nil {
		t.Fatal(err)
	}
	srv, port := serveSkewed(t, m, clock)
	yaml := fmt.Sprintf("control_plane:\n  agent_port: 7555\n  admin_port: %d\n  sessions:\n    heartbeat: 700ms\nfirewall:\n  enable: %v\n", port, firewall)
	if err := os.WriteFile(filepath.Join(h.ConfigHome, "clawker", "settings.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env.ClockGate = &clawkercli.ClockGate{Deadline: 800 * time.Millisecond}
	return env, d, srv, stdout, stderr
}

// `clawker run` against a control plane whose clock stays behind: the
// exact chain, and no container.
func TestRunClockSyncDeadline(t *testing.T) {
	env, d, srv, stdout, stderr := runEnvWithAdmin(t, lagging(5*time.Second, 0), true)
	start := time.Now()
	code := run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1")
	if code != 1 || !strings.HasSuffix(stderr.String(), "\n"+clockSyncFailure) || stdout.Len() != 0 || len(d.containers) != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q, containers %d", code, stdout.String(), stderr.String(), len(d.containers))
	}
	if took := time.Since(start); took < 800*time.Millisecond || srv.count() < 3 {
		t.Errorf("gave up after %s and %d polls", took, srv.count())
	}
	if !strings.Contains(stderr.String(), "waiting for the control plane's clock") {
		t.Errorf("the wait was not shown: %q", stderr.String())
	}
}

// A clock that catches up lets run go on to create the agent, which waits
// for the firewall exactly when the settings enable it.
func TestRunClockSyncCatchesUp(t *testing.T) {
	for _, firewall := range []bool{true, false} {
		env, d, srv, _, stderr := runEnvWithAdmin(t, lagging(5*time.Second, 300*time.Millisecond), firewall)
		env.ClockGate.Deadline = 10 * time.Second
		args := []string{"run", "--project", "myapp", "--agent", "dev", "agent:1"}
		if !firewall {
			args = append(args[:1], append([]string{"--no-firewall"}, args[1:]...)...)
		}
		code := run(t, env, args...)
		if strings.Contains(stderr.String(), "clock sync") || srv.count() < 2 {
			t.Fatalf("exit %d after %d polls, stderr %q", code, srv.count(), stderr.String())
		}
		if !embedsClawkerd() {
			t.Skip("this test binary embeds no clawkerd: the gate passed, the agent cannot be made")
		}
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, stderr.String())
		}
		env2 := d.containers["clawker.myapp.dev"].Config.Env
		if got := slices.Contains(env2, "CLAWKERD_REQUIRE_ENFORCED=1"); got != firewall {
			t.Errorf("firewall.enable %v: env %q", firewall, env2)
		}
	}
}

// CLAWKER_CP_DEBUG_CLOCK_SKEW in the CLI's environment reaches the control
// plane container through the bootstrap, and is reported.
func TestRunPassesClockSkewKnob(t *testing.T) {
	env, _, spy, _, stderr := runEnv(t)
	getenv := env.Getenv
	env.Getenv = func(k string) string {
		if k == "CLAWKER_CP_DEBUG_CLOCK_SKEW" {
			return "-5s,2s"
		}
		return getenv(k)
	}
	run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1")
	if len(spy.calls) != 1 || !slices.Contains(spy.calls[0].Env, "CLAWKER_CP_DEBUG_CLOCK_SKEW=-5s,2s") {
		t.Fatalf("bootstrap calls %+v", spy.calls)
	}
	if !strings.Contains(stderr.String(), "debug knob CLAWKER_CP_DEBUG_CLOCK_SKEW=-5s,2s set") {
		t.Errorf("knob not reported: %q", stderr.String())
	}

	env, _, spy, _, _ = runEnv(t)
	run(t, env, "run", "--project", "myapp", "--agent", "dev", "agent:1")
	// (runEnv's CLAWKER_DEBUG_LABELS is passed too.)
	if len(spy.calls) != 1 || slices.ContainsFunc(spy.calls[0].Env, func(kv string) bool { return strings.HasPrefix(kv, "CLAWKER_CP_DEBUG_CLOCK_SKEW=") }) {
		t.Errorf("without the knob: bootstrap calls %+v", spy.calls)
	}
}
