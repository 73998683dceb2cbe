package netlog_test

import (
	"context"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakHeap samples the live heap every few milliseconds until stop is
// called, which returns the highest sample in MiB: the pipeline's memory
// under a sustained burst (the buffer bound is what holds it).
func peakHeap() (stop func() float64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak uint64
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 {
		close(done)
		<-finished
		return float64(peak) / (1 << 20)
	}
}

func benchRecord() []byte {
	ev := event(egress.HookConnect4, egress.RedirectProxy, afInet, 6, netip.MustParseAddrPort("203.0.113.4:443"), netip.MustParseAddrPort("172.30.0.200:15001"))
	return netlog.Encode(&ev)
}

// BenchmarkRawDecode is the floor: records read off a source and decoded
// into the bpf2go type, nothing else.
func BenchmarkRawDecode(b *testing.B) {
	raw := benchRecord()
	src := netlog.NewMemSource(b.N + 1)
	for i := 0; i < b.N; i++ {
		src.Put(raw)
	}
	var ev bpf.EgressEvent
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		r, err := src.Read(time.Now().Add(time.Second))
		if err != nil {
			b.Fatal(err)
		}
		if err := netlog.Decode(r, &ev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "records/s")
}

// BenchmarkPipeline is records from a fake ring source into a real OTLP
// receiver over TLS, at the rate the pipeline sustains without a drop:
// the producer keeps the ring and the buffer below their bounds. Same
// process: the CPU figure includes the receiver's decoding (it counts
// records, it does not keep them), the heap figure the receiver's garbage.
func BenchmarkPipeline(b *testing.B) {
	cfg, rcv, _ := tlsConfigB(b)
	rcv.CountOnly()
	rcv.Start(b)
	cfg.Endpoint = rcv.Addr
	raw := benchRecord()
	src := netlog.NewMemSource(16384)
	p, err := netlog.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	runtime.GC()
	heap := peakHeap()
	b.ResetTimer()
	c0, t0 := cpuTime(), time.Now()
	if err := p.Start(src); err != nil {
		b.Fatal(err)
	}
	chunk := make([][]byte, 512)
	for i := range chunk {
		chunk[i] = raw
	}
	for put := 0; put < b.N; {
		if uint64(src.Pending()/netlog.RecordSize)+p.Stats().InFlight < 7000 { // the default Buffer is 8192
			n := min(len(chunk), b.N-put)
			put += src.Put(chunk[:n]...)
			continue
		}
		time.Sleep(50 * time.Microsecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep := p.Drain(ctx)
	el, cpu := time.Since(t0), cpuTime()-c0
	b.StopTimer()
	peak := heap()
	if rep.Exported != uint64(b.N) || rcv.Count() != b.N || rep.Dropped != 0 {
		b.Fatalf("exported %d, received %d of %d: %+v", rep.Exported, rcv.Count(), b.N, rep)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
	b.ReportMetric(float64(cpu.Microseconds())/1000*10000/float64(b.N), "cpu-ms/10k")
	b.ReportMetric(peak, "peak-heap-MiB")
}
