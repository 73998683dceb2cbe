package dockerx_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/dockerx"
)

func TestHost(t *testing.T) {
	t.Parallel()
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if h := dockerx.Host(getenv); h != "unix:///var/run/docker.sock" {
		t.Errorf("default host %q", h)
	}
	env["DOCKER_HOST"] = "unix:///tmp/d.sock"
	if h := dockerx.Host(getenv); h != "unix:///tmp/d.sock" {
		t.Errorf("host %q, want DOCKER_HOST", h)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	c, err := dockerx.New("unix:///nonexistent/docker.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.DaemonHost() != "unix:///nonexistent/docker.sock" {
		t.Errorf("daemon host %q", c.DaemonHost())
	}
	// Nothing answers: negotiation fails within the bound, with the reason.
	if _, err := dockerx.Negotiate(context.Background(), c, 2*time.Second); err == nil {
		t.Error("Negotiate succeeded against a missing socket")
	}
	if _, err := dockerx.New("no-scheme-here"); err == nil {
		t.Error("New accepted a malformed host")
	}
}

func TestFilters(t *testing.T) {
	t.Parallel()
	m := dockerx.ManagedFilter()
	if len(m["label"]) != 1 || !m["label"]["dev.clawker.managed=true"] {
		t.Errorf("managed filter %v", m)
	}
	a := dockerx.AgentFilter()
	if len(a["label"]) != 2 || !a["label"]["dev.clawker.managed=true"] || !a["label"]["dev.clawker.purpose=agent"] {
		t.Errorf("agent filter %v", a)
	}
	// Filters are fresh values: adding to one leaves the next untouched.
	m.Add("label", "x=y")
	if len(dockerx.ManagedFilter()["label"]) != 1 {
		t.Error("ManagedFilter shares state between calls")
	}
}

func TestCallTimeout(t *testing.T) {
	t.Parallel()
	begin := time.Now()
	_, err := dockerx.Call(context.Background(), 30*time.Millisecond, func(ctx context.Context) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	})
	if !errors.Is(err, dockerx.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v: want ErrTimeout wrapping the call's own error", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("the bound took %s", d)
	}

	// The caller's own cancellation is not a timeout.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = dockerx.Call(ctx, time.Second, func(ctx context.Context) (int, error) { return 0, ctx.Err() })
	if errors.Is(err, dockerx.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Errorf("err %v after the caller cancelled", err)
	}

	// A call's own error passes through unchanged.
	boom := errors.New("no such container")
	if err := dockerx.Do(context.Background(), time.Second, func(context.Context) error { return boom }); err != boom {
		t.Errorf("err %v, want %v", err, boom)
	}
	v, err := dockerx.Call(context.Background(), time.Second, func(context.Context) (string, error) { return "ok", nil })
	if v != "ok" || err != nil {
		t.Errorf("Call = %q, %v", v, err)
	}
}
