package grpc_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cptest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// startWithClock runs the real grpc actor with now as Config.Now and dials
// its AdminService with the CLI's client over mTLS.
func startWithClock(t *testing.T, now func() time.Time) *adminclient.Client {
	t.Helper()
	home := adminclienttest.NewHome(t)
	m := home.EnsureAuth(t)
	paths := home.Paths(t)
	if err := m.WriteServerBundle(paths.CPAuthDir); err != nil {
		t.Fatal(err)
	}
	ports := cptest.FreePorts(t, 2)
	home.SetAdminPort(t, ports[1])
	sys := newTestSystem(t)
	spawnGRPC(t, sys, cpgrpc.Config{
		BindHost:  "127.0.0.1",
		AgentPort: ports[0], AdminPort: ports[1], AuthDir: paths.CPAuthDir,
		Now:       now,
		Heartbeat: time.Second, RequestTimeout: time.Second,
		Log: zap.NewNop(),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := adminclient.Dial(ctx, paths, home.Settings(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// GetSystemTime reports Config.Now (time.Now without it), and the CLI's
// clock-sync gate judges the real service as it should.
func TestGetSystemTimeClock(t *testing.T) {
	t.Run("real clock", func(t *testing.T) {
		c := startWithClock(t, nil)
		before := time.Now()
		resp, err := c.GetSystemTime(t.Context(), &adminv1.GetSystemTimeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetNow().AsTime(); got.Before(before) || got.After(time.Now()) {
			t.Errorf("now %s, not between the call's start and end", got)
		}
		if err := (&clawkercli.ClockGate{Deadline: time.Second}).Wait(t.Context(), c, nil); err != nil {
			t.Errorf("gate: %v", err)
		}
	})
	t.Run("lagging forever", func(t *testing.T) {
		skew, err := cpgrpc.ParseClockSkew(skewEnv, "-5s")
		if err != nil {
			t.Fatal(err)
		}
		c := startWithClock(t, skew.Clock(time.Now()))
		resp, err := c.GetSystemTime(t.Context(), &adminv1.GetSystemTimeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if lag := time.Since(resp.GetNow().AsTime()); lag < 5*time.Second || lag > 6*time.Second {
			t.Errorf("lag %s, want 5s", lag)
		}
		err = (&clawkercli.ClockGate{Deadline: 600 * time.Millisecond}).Wait(t.Context(), c, nil)
		if err == nil || err.Error() != "cp clock sync deadline exceeded" {
			t.Errorf("gate: %v", err)
		}
	})
	t.Run("lagging, then catching up", func(t *testing.T) {
		skew, err := cpgrpc.ParseClockSkew(skewEnv, "-5s,700ms")
		if err != nil {
			t.Fatal(err)
		}
		c := startWithClock(t, skew.Clock(time.Now()))
		start := time.Now()
		if err := (&clawkercli.ClockGate{Deadline: 10 * time.Second}).Wait(t.Context(), c, nil); err != nil {
			t.Fatalf("gate: %v", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("passed after %s", took)
		}
	})
}
