// Package netlogtest is a real OTLP/gRPC logs receiver for tests: the
// OTLP proto's LogsService served by grpc over TLS that requires a client
// certificate of a test CA (pkg/certs material), recording every record.
package netlogtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// Record is one received log record with what surrounds it.
type Record struct {
	Service, Host, Scope string
	ClientCN             string
	Log                  *logspb.LogRecord
	Attrs                map[string]any // string, int64 or bool values
}

// Receiver is a running (or stopped) OTLP logs receiver.
type Receiver struct {
	collogspb.UnimplementedLogsServiceServer
	Addr string

	tls *tls.Config
	mu  sync.Mutex
	got []Record
	srv *grpc.Server
	// Fail, while set, refuses every export with this error.
	fail error
	// discard counts records instead of keeping them (CountOnly).
	discard bool
	counted int
}

// Material issues a test CA with the CP's server and netlogger pairs.
func Material(t testing.TB) *certs.Material {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "auth")
	if _, err := certs.Ensure(dir, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	m, err := certs.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Pool is a pool of m's CA.
func Pool(m *certs.Material) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.CA)
	return p
}

// NewReceiver prepares a receiver on addr ("127.0.0.1:0" for any port)
// with the server certificate of m, admitting only clients whose
// certificate chains to m's CA. Start it with Start.
func NewReceiver(t testing.TB, m *certs.Material, addr string) *Receiver {
	t.Helper()
	r := &Receiver{Addr: addr, tls: &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{m.Server.Raw}, PrivateKey: m.ServerKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    Pool(m),
	}}
	t.Cleanup(r.Stop)
	return r
}

// FreeAddr returns a loopback address nothing listens on (now).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	_ = ln.Close()
	return a
}

// Start serves; after Stop it may be started again on the same address.
func (r *Receiver) Start(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port of a just-stopped server may linger
		if ln, err = net.Listen("tcp", r.Addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	r.Addr = ln.Addr().String()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(r.tls)))
	collogspb.RegisterLogsServiceServer(srv, r)
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// CountOnly makes the receiver count records without keeping them: for
// benchmarks, whose own heap would otherwise grow with every record and
// charge the pipeline for the receiver's garbage collection.
func (r *Receiver) CountOnly() {
	r.mu.Lock()
	r.discard = true
	r.mu.Unlock()
}

// Stop kills the receiver (connections cut, as a crashed collector).
func (r *Receiver) Stop() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// SetFail makes exports fail with err (nil: succeed again).
func (r *Receiver) SetFail(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

// Export implements the OTLP LogsService.
func (r *Receiver) Export(ctx context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	cn := ""
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			cn = ti.State.PeerCertificates[0].Subject.CommonName
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return nil, r.fail
	}
	if r.discard {
		for _, rl := range req.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				r.counted += len(sl.LogRecords)
			}
		}
		return &collogspb.ExportLogsServiceResponse{}, nil
	}
	for _, rl := range req.ResourceLogs {
		res := attrs(rl.GetResource().GetAttributes())
		for _, sl := range rl.ScopeLogs {
			for _, lr := range sl.LogRecords {
				svc, _ := res["service.name"].(string)
				host, _ := res["host.name"].(string)
				r.got = append(r.got, Record{Service: svc, Host: host, Scope: sl.GetScope().GetName(), ClientCN: cn, Log: lr, Attrs: attrs(lr.Attributes)})
			}
		}
	}
	return &collogspb.ExportLogsServiceResponse{}, nil
}

func attrs(kvs []*commonpb.KeyValue) map[string]any {
	out := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		switch v := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			out[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			out[kv.Key] = v.IntValue
		case *commonpb.AnyValue_BoolValue:
			out[kv.Key] = v.BoolValue
		default:
			out[kv.Key] = kv.Value.String()
		}
	}
	return out
}

// Records returns a copy of what arrived so far.
func (r *Receiver) Records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.got...)
}

// Count is how many records arrived.
func (r *Receiver) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got) + r.counted
}

// WaitCount waits until at least n records arrived.
func (r *Receiver) WaitCount(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for r.Count() < n {
		if time.Now().After(deadline) {
			return errors.New("netlogtest: records did not arrive in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
