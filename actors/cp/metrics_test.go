package cp_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/cp"
)

// A CP serves its own registry at GET /metrics on the health port: with
// the firewall and the netlogger off their state is said (0), and no eBPF
// series appear (nothing is pinned for this CP).
func TestMetricsOnTheHealthPort(t *testing.T) {
	t.Parallel()
	opts, url := options(t, zap.NewNop())
	opts.PinDir = t.TempDir() // nothing pinned there
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan int, 1)
	go func() { exited <- cp.Run(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after the cancel")
		}
	})
	waitHealthy(t, url, exited)
	resp, err := client.Get(strings.TrimSuffix(url, "/healthz") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(b)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	for _, line := range []string{"clawker_netlogger_enabled 0", "clawker_netlogger_records_read_total 0", "clawker_firewall_enabled 0", "clawker_firewall_enforced_agents 0"} {
		if !strings.Contains(body, "\n"+line+"\n") {
			t.Errorf("no %q in\n%s", line, body)
		}
	}
	if strings.Contains(body, "clawker_ebpf_") {
		t.Errorf("eBPF series without pinned programs:\n%s", body)
	}
}
