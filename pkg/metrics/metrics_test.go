package metrics_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/metrics"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

func scrape(t *testing.T, reg *metrics.Registry) string {
	t.Helper()
	srv := httptest.NewServer(reg.Handler())
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, b)
	}
	return string(b)
}

func TestLossIsCountedAtEveryStage(t *testing.T) {
	reg := metrics.New()
	ebpfLoaded := true
	err := reg.Register(
		metrics.EBPF(func() (egress.Stats, bool) {
			return egress.Stats{ReserveFailures: 3, RateLimited: 5, Events: 100, Allowed: 60, Redirected: 30, Denied: 10, BackstopDrops: 1, Cut: 2}, ebpfLoaded
		}),
		metrics.Netlogger(func() (netlog.Stats, bool, bool) {
			return netlog.Stats{Read: 100, Malformed: 1, Emitted: 90, Exported: 80, Failed: 4, Dropped: 9, DroppedDown: 7, InFlight: 6, Up: true}, true, true
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	want := `
# HELP clawker_ebpf_events_lost_total Decision events the eBPF programs did not submit: ring_full (the reserve failed: the reader is behind), rate_limited (monitoring.egress_events_per_second of one cgroup).
# TYPE clawker_ebpf_events_lost_total counter
clawker_ebpf_events_lost_total{reason="rate_limited"} 5
clawker_ebpf_events_lost_total{reason="ring_full"} 3
# HELP clawker_ebpf_events_total Decision events the eBPF programs submitted to the ring buffer.
# TYPE clawker_ebpf_events_total counter
clawker_ebpf_events_total 100
# HELP clawker_firewall_decisions_total Egress decisions of the eBPF programs by action (denied includes the backstop's drops).
# TYPE clawker_firewall_decisions_total counter
clawker_firewall_decisions_total{action="allowed"} 60
clawker_firewall_decisions_total{action="denied"} 10
clawker_firewall_decisions_total{action="redirected"} 30
# HELP clawker_netlogger_records_lost_total Records read and never delivered, by stage: dropped_collector_down (the buffer was full while the collector was unreachable), dropped_buffer_full (the collector answered but took them slower than they came), export_failed (given up after the exporter's retries), malformed (a ring record of the wrong size).
# TYPE clawker_netlogger_records_lost_total counter
clawker_netlogger_records_lost_total{stage="dropped_buffer_full"} 2
clawker_netlogger_records_lost_total{stage="dropped_collector_down"} 7
clawker_netlogger_records_lost_total{stage="export_failed"} 4
clawker_netlogger_records_lost_total{stage="malformed"} 1
# HELP clawker_netlogger_records_exported_total Records the collector acknowledged.
# TYPE clawker_netlogger_records_exported_total counter
clawker_netlogger_records_exported_total 80
# HELP clawker_netlogger_collector_up 1 when the collector answered the last time it was tried.
# TYPE clawker_netlogger_collector_up gauge
clawker_netlogger_collector_up 1
`
	names := []string{"clawker_ebpf_events_lost_total", "clawker_ebpf_events_total", "clawker_firewall_decisions_total",
		"clawker_netlogger_records_lost_total", "clawker_netlogger_records_exported_total", "clawker_netlogger_collector_up"}
	if err := testutil.GatherAndCompare(reg.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// Served over HTTP in the text format, and lint-clean.
	body := scrape(t, reg)
	for _, line := range []string{`clawker_netlogger_records_read_total 100`, `clawker_firewall_backstop_drops_total 1`, `clawker_firewall_sockets_cut_total 2`, `clawker_netlogger_records_in_flight 6`, "go_goroutines ", "process_cpu_seconds_total "} {
		if !strings.Contains(body, "\n"+line) {
			t.Errorf("no %q in\n%s", line, body)
		}
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "clawker_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	// Without loaded programs the eBPF series are absent, not zero.
	ebpfLoaded = false
	if body := scrape(t, reg); strings.Contains(body, "clawker_ebpf_") || strings.Contains(body, "clawker_firewall_decisions_total") {
		t.Fatalf("eBPF series without programs:\n%s", body)
	}
}

func TestRegistriesAreApart(t *testing.T) {
	a, b := metrics.New(), metrics.New()
	one := func() (netlog.Stats, bool, bool) { return netlog.Stats{Read: 1}, true, true }
	two := func() (netlog.Stats, bool, bool) { return netlog.Stats{Read: 2}, true, true }
	if err := a.Register(metrics.Netlogger(one)); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(metrics.Netlogger(two)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(scrape(t, a), "\nclawker_netlogger_records_read_total 1\n") || !strings.Contains(scrape(t, b), "\nclawker_netlogger_records_read_total 2\n") {
		t.Fatal("the two registries share their series")
	}
}

type refusing struct {
	healthpb.UnimplementedHealthServer
}

func (refusing) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, status.Error(codes.PermissionDenied, "no")
}

func TestGRPCCallsAreCounted(t *testing.T) {
	reg := metrics.New()
	start := func(server string, svc healthpb.HealthServer) healthpb.HealthClient {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(reg.GRPCServerOptions(server)...)
		healthpb.RegisterHealthServer(srv, svc)
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(srv.Stop)
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return healthpb.NewHealthClient(conn)
	}
	agent, admin := start("agent", health.NewServer()), start("admin", refusing{})
	ctx := context.Background()
	for range 3 {
		if _, err := agent.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatal(err)
	}
	// A stream: in flight while open, handled once it ends.
	sctx, cancel := context.WithCancel(ctx)
	w, err := agent.Watch(sctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP clawker_grpc_in_flight gRPC calls and streams running now (a connected clawkerd holds one Session stream).
# TYPE clawker_grpc_in_flight gauge
clawker_grpc_in_flight{method="Check",server="admin",service="grpc.health.v1.Health"} 0
clawker_grpc_in_flight{method="Check",server="agent",service="grpc.health.v1.Health"} 0
clawker_grpc_in_flight{method="Watch",server="agent",service="grpc.health.v1.Health"} 1
`
	if err := testutil.GatherAndCompare(reg.Gatherer(), strings.NewReader(want), "clawker_grpc_in_flight"); err != nil {
		t.Fatal(err)
	}
	cancel()
	wantDone := `
# HELP clawker_grpc_handled_total gRPC calls (unary) and streams finished, by server (agent, admin), service, method and status code.
# TYPE clawker_grpc_handled_total counter
clawker_grpc_handled_total{code="Canceled",method="Watch",server="agent",service="grpc.health.v1.Health"} 1
clawker_grpc_handled_total{code="OK",method="Check",server="agent",service="grpc.health.v1.Health"} 3
clawker_grpc_handled_total{code="PermissionDenied",method="Check",server="admin",service="grpc.health.v1.Health"} 1
`
	// The server sees the cancel after the client: wait for its count.
	var last error
	for range 500 {
		if last = testutil.GatherAndCompare(reg.Gatherer(), strings.NewReader(wantDone), "clawker_grpc_handled_total"); last == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if last != nil {
		t.Fatal(last)
	}
}
