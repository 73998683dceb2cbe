package netlog

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clawker/clawker-cp/bpf"
)

// Config wires a Pipeline. Zero durations and sizes take the defaults
// beside them.
type Config struct {
	// Endpoint is the collector's host:port.
	Endpoint string
	// TLS is the client config (with the clawker-netlogger certificate);
	// nil means plaintext, which settings allow only on loopback or the
	// agent network.
	TLS *tls.Config
	// HostName is the resource's host.name.
	HostName string
	// Buffer bounds the records handed to the batch processor and not
	// yet exported or failed (default 8192, a few MiB): while the
	// collector is away they wait there, beyond it new records are
	// dropped and counted.
	Buffer int
	// BatchSize is the most records per export (default 1024).
	BatchSize int
	// ExportInterval is the longest a record waits for a batch to fill
	// (default 1s).
	ExportInterval time.Duration
	// RetryFor is how long one batch is retried while the collector is
	// unavailable before it is counted failed (default 30s).
	RetryFor time.Duration
	// PollInterval is how often the reader looks at the ring when the
	// programs did not wake it (they do every 64 KiB; default 100ms).
	PollInterval time.Duration
	// ParkFor is the longest a record waits for enrichment of a cgroup or
	// address it does not know yet (default 250ms).
	ParkFor time.Duration
	// Enrich returns the current enrichment; nil means none.
	Enrich func() *Snapshot
	// Refresh asks for a snapshot newer than now. It must not block.
	Refresh func()
	// OnEvent, when set, sees every decoded record on the reader's
	// goroutine (the netlogger's feed of kernel refusals into `clawker
	// firewall denied`). It must not block.
	OnEvent func(ev *bpf.EgressEvent, at time.Time)
	// Availability is called on every change of the collector's
	// reachability (up false: reason says why). It must not block.
	Availability func(up bool, reason string)
}

func (c *Config) defaults() {
	if c.Buffer <= 0 {
		c.Buffer = 8192
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1024
	}
	if c.BatchSize > c.Buffer {
		c.BatchSize = c.Buffer
	}
	if c.ExportInterval <= 0 {
		c.ExportInterval = time.Second
	}
	if c.RetryFor <= 0 {
		c.RetryFor = 30 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.ParkFor <= 0 {
		c.ParkFor = 250 * time.Millisecond
	}
	if c.Enrich == nil {
		c.Enrich = func() *Snapshot { return nil }
	}
	if c.Refresh == nil {
		c.Refresh = func() {}
	}
	if c.Availability == nil {
		c.Availability = func(bool, string) {}
	}
}

// Stats count every record at every stage. Read + Lines = Malformed +
// Emitted + Dropped + Parked; Emitted = Exported + Failed + InFlight.
type Stats struct {
	Read      uint64 // taken off the ring
	Lines     uint64 // the siblings' log lines taken (EmitLine)
	Malformed uint64 // records of the wrong size
	Emitted   uint64 // handed to the batch processor
	Exported  uint64 // acknowledged by the collector
	Failed    uint64 // given up by the exporter (after its retries)
	Dropped   uint64 // refused at the full buffer (collector away or slow)
	// DroppedDown is the part of Dropped refused while the collector was
	// unreachable; the rest overflowed a collector that answered but
	// took them slower than they came.
	DroppedDown uint64
	Parked      uint64 // waiting for enrichment now
	InFlight    uint64 // in the batch processor or an export now
	Up          bool   // the collector answered last time
}

// Pipeline is one collector connection and its reader.
type Pipeline struct {
	cfg      Config
	conn     *grpc.ClientConn
	provider *sdklog.LoggerProvider
	logger   log.Logger
	clock    *BootClock

	read, malformed, emitted, exported, failed, dropped, droppedDown, parked atomic.Uint64

	siblings siblingLoggers // EmitLine's, on the same processor
	lines    atomic.Uint64
	closing  atomic.Bool // the provider is being shut down: EmitLine drops

	upMu    sync.Mutex
	upKnown bool
	up      bool
	// down mirrors !up for emit, which must not take upMu per record.
	down atomic.Bool

	monitorStop context.CancelFunc
	monitorDone chan struct{}

	srcMu      sync.Mutex
	src        Source
	readerDone chan struct{}
	draining   atomic.Bool
	closeOnce  sync.Once
}

// New connects (lazily: an absent collector is not an error) and builds
// the logs SDK pipeline.
func New(cfg Config) (*Pipeline, error) {
	cfg.defaults()
	host, _, err := net.SplitHostPort(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("netlog: endpoint %q: %w", cfg.Endpoint, err)
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName = host
		}
		cfg.TLS = tc
		creds = credentials.NewTLS(tc)
	}
	// A short reconnect backoff: the collector coming back must be noticed
	// within seconds, not grpc's default two minutes.
	conn, err := grpc.NewClient(cfg.Endpoint, grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 3 * time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("netlog: %w", err)
	}
	exp, err := otlploggrpc.New(context.Background(),
		otlploggrpc.WithGRPCConn(conn),
		otlploggrpc.WithTimeout(cfg.RetryFor+5*time.Second),
		otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: true, InitialInterval: 250 * time.Millisecond, MaxInterval: 2 * time.Second, MaxElapsedTime: cfg.RetryFor}))
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("netlog: exporter: %w", err)
	}
	p := &Pipeline{cfg: cfg, conn: conn, clock: NewBootClock(), monitorDone: make(chan struct{})}
	res := resource.NewSchemaless(attribute.String("service.name", ServiceName), attribute.String("host.name", cfg.HostName))
	bp := sdklog.NewBatchProcessor(&counting{next: exp, p: p},
		// The queue is never the one that drops: the reader keeps at most
		// Buffer records in flight, so drops are counted where they happen.
		sdklog.WithMaxQueueSize(cfg.Buffer+cfg.BatchSize),
		sdklog.WithExportMaxBatchSize(cfg.BatchSize),
		sdklog.WithExportInterval(cfg.ExportInterval),
		sdklog.WithExportTimeout(cfg.RetryFor+10*time.Second))
	// build writes each key once, so the SDK's duplicate-key check is
	// skipped: it indexed every record's attributes in a map, one
	// attribute at a time, and was most of the reader's CPU.
	p.provider = sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(bp), sdklog.WithAllowKeyDuplication())
	p.logger = p.provider.Logger(ScopeName)
	p.siblings = newSiblingLoggers(bp, cfg.HostName)
	ctx, cancel := context.WithCancel(context.Background())
	p.monitorStop = cancel
	go p.monitor(ctx)
	return p, nil
}

// counting is the exporter as the batch processor sees it: it counts
// what the collector took and what was given up, and tells availability.
type counting struct {
	next sdklog.Exporter
	p    *Pipeline
}

func (c *counting) Export(ctx context.Context, recs []sdklog.Record) error {
	if len(recs) == 0 {
		return nil // the flushes' empty exports say nothing about the collector
	}
	err := c.next.Export(ctx, recs)
	if err != nil {
		c.p.failed.Add(uint64(len(recs)))
		c.p.setUp(false, fmt.Sprintf("export of %d records failed: %v", len(recs), err))
		return err
	}
	c.p.exported.Add(uint64(len(recs)))
	c.p.setUp(true, "")
	return nil
}

func (c *counting) Shutdown(ctx context.Context) error   { return c.next.Shutdown(ctx) }
func (c *counting) ForceFlush(ctx context.Context) error { return c.next.ForceFlush(ctx) }

func (p *Pipeline) setUp(up bool, reason string) {
	p.upMu.Lock()
	changed := !p.upKnown || p.up != up
	p.upKnown, p.up = true, up
	p.down.Store(!up)
	p.upMu.Unlock()
	if changed {
		p.cfg.Availability(up, reason)
	}
}

// monitor follows the connection's state, so an unreachable collector is
// reported at once (not after the first export's retries) and its return
// as soon as the connection is ready again.
func (p *Pipeline) monitor(ctx context.Context) {
	defer close(p.monitorDone)
	p.conn.Connect()
	for {
		s := p.conn.GetState()
		switch s {
		case connectivity.Ready:
			p.setUp(true, "")
		case connectivity.TransientFailure:
			p.setUp(false, p.probe(ctx))
		case connectivity.Idle:
			p.conn.Connect() // after grpc's idle timeout: keep the channel warm
		}
		if !p.conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}

// probe dials the collector itself for a reason worth logging: grpc's
// state carries none.
func (p *Pipeline) probe(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.cfg.Endpoint)
	if err != nil {
		return fmt.Sprintf("cannot reach the collector at %s: %v", p.cfg.Endpoint, err)
	}
	defer c.Close()
	if p.cfg.TLS == nil {
		return fmt.Sprintf("the collector at %s accepts TCP but not OTLP/gRPC in plaintext", p.cfg.Endpoint)
	}
	tc := tls.Client(c, p.cfg.TLS)
	err = tc.HandshakeContext(ctx)
	if err == nil {
		// TLS 1.3 servers judge the client certificate after the client's
		// handshake is done: one read surfaces their alert.
		_ = tc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var b [1]byte
		if _, rerr := tc.Read(b[:]); rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
			err = rerr
		}
	}
	if err == nil {
		return fmt.Sprintf("the collector at %s completes TLS but does not answer OTLP/gRPC", p.cfg.Endpoint)
	}
	if strings.Contains(err.Error(), "does not look like a TLS handshake") {
		return fmt.Sprintf("the collector at %s answers in plaintext; it must serve TLS (monitoring.otlp_insecure: true allows plaintext to a collector on loopback or the agent network)", p.cfg.Endpoint)
	}
	return fmt.Sprintf("TLS with the collector at %s failed: %v", p.cfg.Endpoint, err)
}

// Start runs the reader on src until Drain or Close. Once only.
func (p *Pipeline) Start(src Source) error {
	p.srcMu.Lock()
	defer p.srcMu.Unlock()
	if p.src != nil {
		return errors.New("netlog: a source is already being read")
	}
	p.src = src
	p.readerDone = make(chan struct{})
	go p.reader(src, p.readerDone)
	return nil
}

type parkedRec struct {
	ev bpf.EgressEvent
	at time.Time
}

// maxParked bounds the records waiting for enrichment; beyond it they go
// out with what is known.
const maxParked = 4096

// reader is the one goroutine reading the source: it never waits on the
// network, only on the ring.
func (p *Pipeline) reader(src Source, done chan struct{}) {
	defer close(done)
	var ev bpf.EgressEvent
	var parked []parkedRec
	release := func(now time.Time, all bool) {
		if len(parked) == 0 {
			return
		}
		snap := p.snapshot()
		n := 0
		for n < len(parked) && (all || parked[n].at.Before(snap.AsOf) || now.Sub(parked[n].at) >= p.cfg.ParkFor) {
			p.emit(&parked[n].ev, parked[n].at, snap)
			n++
		}
		parked = parked[n:]
		if len(parked) == 0 {
			parked = nil // let the backing array go
		}
		p.parked.Store(uint64(len(parked)))
	}
	defer func() { release(time.Now(), true) }()
	lastClock := time.Now()
	for {
		wait := p.cfg.PollInterval
		if len(parked) > 0 {
			wait = min(wait, p.cfg.ParkFor/4)
		}
		raw, err := src.Read(time.Now().Add(wait))
		now := time.Now()
		if now.Sub(lastClock) >= time.Second {
			p.clock.Refresh()
			lastClock = now
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			release(now, false)
			continue
		default:
			// Flushed (the drain read everything pending), closed, or the
			// ring failed: parked records go out with what is known.
			return
		}
		p.read.Add(1)
		if Decode(raw, &ev) != nil {
			p.malformed.Add(1)
			continue
		}
		if p.cfg.OnEvent != nil {
			p.cfg.OnEvent(&ev, now)
		}
		snap := p.snapshot()
		unknown := !snap.known(&ev) && !snap.AsOf.After(now)
		if (unknown || len(parked) > 0) && !p.draining.Load() {
			// The cgroup or the address may be minutes old but new to us:
			// ask, and hold the record for one answer rather than emit it
			// without its agent. Records behind a held one wait with it,
			// so the stream keeps the ring's order.
			if len(parked) == maxParked {
				p.emit(&parked[0].ev, parked[0].at, snap)
				parked = parked[1:]
			}
			parked = append(parked, parkedRec{ev: ev, at: now})
			p.parked.Store(uint64(len(parked)))
			if unknown {
				p.cfg.Refresh()
			}
			release(now, false)
			continue
		}
		p.emit(&ev, now, snap)
	}
}

var emptySnapshot = &Snapshot{}

func (p *Pipeline) snapshot() *Snapshot {
	if s := p.cfg.Enrich(); s != nil {
		return s
	}
	return emptySnapshot
}

// emit hands one record to the batch processor, or drops it when Buffer
// records are already waiting for the collector.
func (p *Pipeline) emit(ev *bpf.EgressEvent, observed time.Time, snap *Snapshot) {
	if p.emitted.Load()-p.exported.Load()-p.failed.Load() >= uint64(p.cfg.Buffer) {
		p.dropped.Add(1)
		if p.down.Load() {
			p.droppedDown.Add(1)
		}
		return
	}
	var r log.Record
	build(&r, ev, p.clock, observed, snap)
	p.emitted.Add(1)
	p.logger.Emit(context.Background(), r)
}

// RouteOTelErrors sends the OpenTelemetry SDK's internal errors (export
// failures it reports besides returning them) to f instead of the
// standard logger's plain stderr lines. Process-wide: the netlogger is
// the process's only OpenTelemetry user.
func RouteOTelErrors(f func(error)) {
	otel.SetErrorHandler(otel.ErrorHandlerFunc(f))
}

// Stats reads the counters.
func (p *Pipeline) Stats() Stats {
	// Exported and failed first: a record counted there was emitted
	// before, so InFlight never underflows.
	// DroppedDown before Dropped, for the same reason.
	exp, fail, down := p.exported.Load(), p.failed.Load(), p.droppedDown.Load()
	s := Stats{
		Read: p.read.Load(), Lines: p.lines.Load(), Malformed: p.malformed.Load(), Emitted: p.emitted.Load(),
		Exported: exp, Failed: fail, Dropped: p.dropped.Load(), DroppedDown: down, Parked: p.parked.Load(),
	}
	s.InFlight = s.Emitted - exp - fail
	p.upMu.Lock()
	s.Up = p.up
	p.upMu.Unlock()
	return s
}

// DrainReport is what Drain did.
type DrainReport struct {
	Stats
	// ReadAll is false when the ring was still being filled faster than
	// read when the read phase's share of the bound ran out.
	ReadAll bool
	// Err is the provider's shutdown error: records not delivered.
	Err error
}

// Drain reads what is in the ring (within about half of ctx's time),
// exports every record read and shuts the provider down, all before ctx
// ends; then the connection closes. Safe to call once; Close after it is
// a no-op.
func (p *Pipeline) Drain(ctx context.Context) DrainReport {
	rep := DrainReport{ReadAll: true}
	p.draining.Store(true)
	p.srcMu.Lock()
	src, done := p.src, p.readerDone
	p.srcMu.Unlock()
	if src != nil {
		readBy := time.Now().Add(time.Second)
		if dl, ok := ctx.Deadline(); ok {
			readBy = time.Now().Add(time.Until(dl) / 2)
		}
		_ = src.Flush()
		t := time.NewTimer(time.Until(readBy))
		select {
		case <-done:
		case <-t.C:
			rep.ReadAll = false
			_ = src.Close()
			<-done
		}
		t.Stop()
	}
	p.closeOnce.Do(func() {
		p.closing.Store(true)
		rep.Err = p.provider.Shutdown(ctx)
		p.shutdownRest(src)
	})
	rep.Stats = p.Stats()
	return rep
}

// Close stops at once (a restart, or the CP going away without a drain):
// what is buffered gets one second to leave.
func (p *Pipeline) Close() {
	p.srcMu.Lock()
	src, done := p.src, p.readerDone
	p.srcMu.Unlock()
	if src != nil {
		_ = src.Close()
		<-done
	}
	p.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.closing.Store(true)
		_ = p.provider.Shutdown(ctx)
		p.shutdownRest(src)
	})
}

func (p *Pipeline) shutdownRest(src Source) {
	p.monitorStop()
	<-p.monitorDone
	_ = p.conn.Close()
	if src != nil {
		_ = src.Close()
	}
}
