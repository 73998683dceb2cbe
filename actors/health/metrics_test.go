package health_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/metrics"
	"github.com/clawker/clawker-cp/pkg/netlog"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// GET /metrics is served on the health port, from the registry handed in
// (ready or not: a scrape says how start-up goes), and only then.
func TestMetricsRoute(t *testing.T) {
	for _, with := range []bool{true, false} {
		addr := "127.0.0.1:" + strconv.Itoa(cptest.FreePorts(t, 1)[0])
		cfg := health.Config{Addr: addr, RootPath: "none", ProbeTimeout: time.Second, Log: zap.NewNop()}
		if with {
			reg := metrics.New()
			if err := reg.Register(metrics.Netlogger(func() (netlog.Stats, bool, bool) { return netlog.Stats{Read: 42}, true, true })); err != nil {
				t.Fatal(err)
			}
			cfg.Metrics = reg.Handler()
		}
		sys := actortest.Quiet()
		h := sys.Root.Spawn(actor.PropsFromProducer(health.New(cfg)))
		code, body := getState(t, "http://"+addr+"/metrics")
		_ = sys.Root.StopFuture(h).Wait()
		sys.Shutdown()
		switch {
		case with && (code != http.StatusOK || !strings.Contains(body, "\nclawker_netlogger_records_read_total 42\n")):
			t.Fatalf("with a registry: %d %s", code, body)
		case !with && code != http.StatusNotFound:
			t.Fatalf("without a registry: %d %s", code, body)
		}
	}
}
