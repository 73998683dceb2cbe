// Package metrics is the control plane's Prometheus registry, served at
// GET /metrics on the health port. One Registry per CP instance (never
// the process-wide default), so two control planes in one test process
// count apart.
//
// The counters are read where they are kept, at scrape time: the eBPF
// programs' stats map, the netlogger's pipeline (through a function the
// CP wires), and the gRPC servers' interceptors here. Every stage of the
// egress event log that can lose a record has its own series, so a gap
// between clawker_ebpf_events_total and
// clawker_netlogger_records_exported_total is always explained by one of
// them.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every series of the CP.
const Namespace = "clawker"

// Registry is one CP instance's metrics.
type Registry struct {
	reg  *prometheus.Registry
	grpc *grpcMetrics
}

// New returns a registry with the Go runtime's and the process's
// collectors and the gRPC counters (fed by GRPCServerOptions).
func New() *Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g := newGRPCMetrics()
	reg.MustRegister(g)
	return &Registry{reg: reg, grpc: g}
}

// Register adds collectors (EBPF, Netlogger, or any other).
func (r *Registry) Register(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := r.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Gatherer is the registry as a Prometheus gatherer (tests read it).
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Handler serves the text exposition format. A collector that fails is
// left out of the answer, the rest is still served.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
