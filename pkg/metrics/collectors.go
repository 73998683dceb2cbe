package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

// funcCollector emits what collect produces at each scrape; it describes
// nothing in advance (an unchecked collector), since some of its series
// exist only while their subsystem does.
type funcCollector func(ch chan<- prometheus.Metric)

func (f funcCollector) Describe(chan<- *prometheus.Desc)    {}
func (f funcCollector) Collect(ch chan<- prometheus.Metric) { f(ch) }
func counter(d *prometheus.Desc, v uint64, lv ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
}
func gauge(d *prometheus.Desc, v float64, lv ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
}

func desc(subsystem, name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, name), help, labels, nil)
}

var (
	ebpfEvents = desc("ebpf", "events_total",
		"Decision events the eBPF programs submitted to the ring buffer.")
	ebpfEventsLost = desc("ebpf", "events_lost_total",
		"Decision events the eBPF programs did not submit: ring_full (the reserve failed: the reader is behind), rate_limited (monitoring.egress_events_per_second of one cgroup).", "reason")
	fwDecisions = desc("firewall", "decisions_total",
		"Egress decisions of the eBPF programs by action (denied includes the backstop's drops).", "action")
	fwBackstop = desc("firewall", "backstop_drops_total",
		"Packets the cgroup_skb backstop dropped: sent to a destination the socket hooks would not pass. Zero in normal operation.")
	fwCut = desc("firewall", "sockets_cut_total",
		"Sockets destroyed when a bypass or disable ended.")
)

// EBPF reads the programs' stats map at each scrape. read returns
// ok=false when no programs are loaded (firewall.enable: false, or before
// the eBPF owner pinned them): the series are then absent.
func EBPF(read func() (egress.Stats, bool)) prometheus.Collector {
	return funcCollector(func(ch chan<- prometheus.Metric) {
		s, ok := read()
		if !ok {
			return
		}
		ch <- counter(ebpfEvents, s.Events)
		ch <- counter(ebpfEventsLost, s.ReserveFailures, "ring_full")
		ch <- counter(ebpfEventsLost, s.RateLimited, "rate_limited")
		ch <- counter(fwDecisions, s.Allowed, "allowed")
		ch <- counter(fwDecisions, s.Redirected, "redirected")
		ch <- counter(fwDecisions, s.Denied, "denied")
		ch <- counter(fwBackstop, s.BackstopDrops)
		ch <- counter(fwCut, s.Cut)
	})
}

var (
	nlEnabled = desc("netlogger", "enabled",
		"1 while the netlogger ships records (monitoring.otlp_endpoint set and the pipeline built).")
	nlUp = desc("netlogger", "collector_up",
		"1 when the collector answered the last time it was tried.")
	nlRead = desc("netlogger", "records_read_total",
		"Records the netlogger read off the ring buffer.")
	nlExported = desc("netlogger", "records_exported_total",
		"Records the collector acknowledged.")
	nlLost = desc("netlogger", "records_lost_total",
		"Records read and never delivered, by stage: dropped_collector_down (the buffer was full while the collector was unreachable), dropped_buffer_full (the collector answered but took them slower than they came), export_failed (given up after the exporter's retries), malformed (a ring record of the wrong size).", "stage")
	nlInFlight = desc("netlogger", "records_in_flight",
		"Records handed to the batch processor and not yet exported or failed (bounded by the buffer).")
	nlParked = desc("netlogger", "records_parked",
		"Records held back for a moment until enrichment knows their cgroup or address.")
)

// Netlogger reads the netlogger's counters at each scrape. read returns
// ok=false when it did not answer: the series are then absent, not zero.
func Netlogger(read func() (st netlog.Stats, enabled, ok bool)) prometheus.Collector {
	return funcCollector(func(ch chan<- prometheus.Metric) {
		s, enabled, ok := read()
		if !ok {
			return
		}
		ch <- gauge(nlEnabled, b2f(enabled))
		ch <- gauge(nlUp, b2f(enabled && s.Up))
		ch <- counter(nlRead, s.Read)
		ch <- counter(nlExported, s.Exported)
		ch <- counter(nlLost, s.DroppedDown, "dropped_collector_down")
		ch <- counter(nlLost, s.Dropped-s.DroppedDown, "dropped_buffer_full")
		ch <- counter(nlLost, s.Failed, "export_failed")
		ch <- counter(nlLost, s.Malformed, "malformed")
		ch <- gauge(nlInFlight, float64(s.InFlight))
		ch <- gauge(nlParked, float64(s.Parked))
	})
}

// FirewallView is what the firewall reports about itself.
type FirewallView struct {
	Enabled  bool
	Agents   int // enforced containers
	Bypassed int // of them, bypassed or disabled now
	Rules    int // stored egress rules
	// Stack maps a stack member's name to whether it is healthy.
	Stack map[string]bool
}

var (
	fwEnabled  = desc("firewall", "enabled", "1 with firewall.enable: true.")
	fwAgents   = desc("firewall", "enforced_agents", "Agent containers the eBPF programs enforce.")
	fwBypassed = desc("firewall", "bypassed_agents", "Enforced agents bypassed or disabled now.")
	fwRules    = desc("firewall", "rules", "Stored egress rules.")
	fwStack    = desc("firewall", "stack_member_healthy", "1 when the stack member answered its last health check.", "member")
)

// Firewall reads the firewall's status at each scrape (ok=false: it did
// not answer, the series are absent).
func Firewall(read func() (FirewallView, bool)) prometheus.Collector {
	return funcCollector(func(ch chan<- prometheus.Metric) {
		v, ok := read()
		if !ok {
			return
		}
		ch <- gauge(fwEnabled, b2f(v.Enabled))
		ch <- gauge(fwAgents, float64(v.Agents))
		ch <- gauge(fwBypassed, float64(v.Bypassed))
		ch <- gauge(fwRules, float64(v.Rules))
		for name, healthy := range v.Stack {
			ch <- gauge(fwStack, b2f(healthy), name)
		}
	})
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
