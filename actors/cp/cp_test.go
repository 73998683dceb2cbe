package cp_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/cp"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// options builds Run's options for a fresh home: free ports, firewall off
// (the stack is not built yet), auth material in place.
func options(tb testing.TB, log *zap.Logger) (cp.Options, string) {
	tb.Helper()
	home := cptest.NewCPHome(tb, "")
	s, err := settings.Load(home.SettingsFile(tb))
	if err != nil {
		tb.Fatal(err)
	}
	url := "http://127.0.0.1:" + strconv.Itoa(s.ControlPlane.HealthPort) + "/healthz"
	return cp.Options{Settings: s, Paths: home.Paths(tb), Log: log, BindHost: "127.0.0.1"}, url
}

var client = &http.Client{Timeout: 2 * time.Second}

// waitHealthy polls /healthz until it answers 200, or fails.
func waitHealthy(tb testing.TB, url string, exited <-chan int) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case code := <-exited:
			tb.Fatalf("Run returned %d before /healthz turned 200", code)
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not 200 within 30s", url)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRunDrainsOnCancel(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	opts, url := options(t, zap.New(core))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan int, 1)
	go func() { exited <- cp.Run(ctx, opts) }()
	waitHealthy(t, url, exited)

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("Run returned %d after a cancel, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the cancel")
	}

	var got []string
	want := cpapi.DrainStepNames()
	for _, e := range logs.FilterField(zap.String("event", "drain_step")).All() {
		m := e.ContextMap()
		got = append(got, m["step"].(string))
		if o := m["outcome"]; o == supervise.OutcomeTimeout || o == supervise.OutcomeFailed {
			t.Errorf("step %v: %v (%v)", m["step"], o, m["detail"])
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("drain steps %v, want %v", got, want)
	}
	begin := logs.FilterField(zap.String("event", "drain_begin")).All()
	if len(begin) != 1 || begin[0].ContextMap()["reason"] != "signal" {
		t.Errorf("drain_begin entries: %v", begin)
	}
	if resp, err := client.Get(url); err == nil {
		resp.Body.Close()
		t.Error("the health port still answers after Run returned")
	}
}

// BenchmarkRunDrainNoContainers measures the real drain chain with no
// containers and no agents: from the cancel of Run's context (a signal) to
// Run's return, the tree built by cp.Run with every subsystem ready.
func BenchmarkRunDrainNoContainers(b *testing.B) {
	opts, url := options(b, zap.NewNop())
	b.ReportAllocs()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		exited := make(chan int, 1)
		go func() { exited <- cp.Run(ctx, opts) }()
		waitHealthy(b, url, exited)
		b.StartTimer()
		cancel()
		code := <-exited
		b.StopTimer()
		if code != 0 {
			b.Fatalf("Run returned %d", code)
		}
	}
}
