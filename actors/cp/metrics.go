package cp

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/netlogger"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/metrics"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

// scrapeTimeout bounds each actor's answer to a scrape: a busy actor
// leaves its series out of that one scrape rather than hold the others.
const scrapeTimeout = time.Second

// newMetrics is this CP instance's registry behind GET /metrics: the
// programs' stats map read from its pin (no order through the eBPF
// owner's mailbox), the netlogger's and the firewall's counters asked of
// them at scrape time.
func newMetrics(sys *actor.ActorSystem, pidOf func(string) *actor.PID, pinDir string, log *zap.Logger) *metrics.Registry {
	reg := metrics.New()
	var warnOnce sync.Once
	err := reg.Register(
		metrics.EBPF(func() (egress.Stats, bool) {
			s, err := egress.ReadPinnedStats(pinDir)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				// Once: a scrape every few seconds must not flood the log.
				warnOnce.Do(func() {
					log.Warn("metrics: cannot read the eBPF stats map", zap.String("event", "metrics_unavailable"), zap.String("pin_dir", pinDir), zap.Error(err))
				})
			}
			return s, err == nil
		}),
		metrics.Netlogger(func() (netlog.Stats, bool, bool) {
			st, err := request.Ask[*netlogger.Stats](context.Background(), request.Target{Sys: sys, PID: pidOf(cpapi.ActorNetlogger), Timeout: scrapeTimeout}, &netlogger.GetStats{})
			if err != nil {
				return netlog.Stats{}, false, false
			}
			return st.Stats, st.Enabled, true
		}),
		metrics.Firewall(func() (metrics.FirewallView, bool) {
			st, err := firewall.NewClient(sys, pidOf(cpapi.ActorFirewall), scrapeTimeout).Status(context.Background())
			if err != nil {
				return metrics.FirewallView{}, false
			}
			v := metrics.FirewallView{Enabled: st.Enabled, Agents: len(st.Agents), Rules: st.Rules, Stack: map[string]bool{}}
			now := time.Now()
			for _, a := range st.Agents {
				if a.Disabled || a.BypassUntil.After(now) {
					v.Bypassed++
				}
			}
			for _, m := range st.Stack {
				v.Stack[m.Name] = m.Healthy
			}
			return v, true
		}),
	)
	if err != nil {
		// Only a programming error (two collectors of one name) gets here.
		log.Warn("metrics: a collector was refused", zap.String("event", "metrics_unavailable"), zap.Error(err))
	}
	return reg
}
