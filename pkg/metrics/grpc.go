package metrics

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// grpcMetrics counts the CP's gRPC calls: the agent and admin services.
type grpcMetrics struct {
	handled  *prometheus.CounterVec
	inFlight *prometheus.GaugeVec
}

func newGRPCMetrics() *grpcMetrics {
	return &grpcMetrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "grpc", Name: "handled_total",
			Help: "gRPC calls (unary) and streams finished, by server (agent, admin), service, method and status code.",
		}, []string{"server", "service", "method", "code"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "grpc", Name: "in_flight",
			Help: "gRPC calls and streams running now (a connected clawkerd holds one Session stream).",
		}, []string{"server", "service", "method"}),
	}
}

func (g *grpcMetrics) Describe(ch chan<- *prometheus.Desc) {
	g.handled.Describe(ch)
	g.inFlight.Describe(ch)
}

func (g *grpcMetrics) Collect(ch chan<- prometheus.Metric) {
	g.handled.Collect(ch)
	g.inFlight.Collect(ch)
}

// splitMethod splits "/pkg.Service/Method".
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

func (g *grpcMetrics) track(server, full string) func(err error) {
	svc, m := splitMethod(full)
	in := g.inFlight.WithLabelValues(server, svc, m)
	in.Inc()
	return func(err error) {
		in.Dec()
		g.handled.WithLabelValues(server, svc, m, status.Code(err).String()).Inc()
	}
}

// GRPCServerOptions are the interceptors that count one server's calls
// (server names it in the series: "agent" or "admin"). They go first, so
// calls the authorization refuses are counted too.
func (r *Registry) GRPCServerOptions(server string) []grpc.ServerOption {
	g := r.grpc
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			done := g.track(server, info.FullMethod)
			res, err := h(ctx, req)
			done(err)
			return res, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			done := g.track(server, info.FullMethod)
			err := h(srv, ss)
			done(err)
			return err
		}),
	}
}
