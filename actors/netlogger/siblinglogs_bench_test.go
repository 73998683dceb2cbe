package netlogger

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/pkg/netlog"
	"github.com/clawker/clawker-cp/pkg/netlog/netlogtest"
)

// memDocker serves one container whose log is n generated lines in the
// daemon's multiplexed format (half access-log JSON on stdout, half text
// on stderr), produced only as fast as the pipeline keeps its in-flight
// records under the buffer bound, so the figure is the rate sustained
// without a drop. Later attaches wait for the end of the run.
type memDocker struct {
	n        int
	inFlight func() uint64
	served   bool
}

func (m *memDocker) ContainerInspect(ctx context.Context, id string, o client.ContainerInspectOptions) (client.ContainerInspectResult, error) {
	return client.ContainerInspectResult{Container: container.InspectResponse{ID: "c0ffee"}}, nil
}

func (m *memDocker) ContainerLogs(ctx context.Context, id string, o client.ContainerLogsOptions) (client.ContainerLogsResult, error) {
	if m.served {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	m.served = true
	pr, pw := io.Pipe()
	go func() {
		out, errw := &frameWriter{w: pw, stream: stdcopy.Stdout}, &frameWriter{w: pw, stream: stdcopy.Stderr}
		ts := time.Now()
		for i := 0; i < m.n; i++ {
			for m.inFlight() > 7000 { // the default Buffer is 8192
				time.Sleep(50 * time.Microsecond)
			}
			stamp := ts.Add(time.Duration(i) * time.Microsecond).UTC().Format(time.RFC3339Nano)
			if i%2 == 0 {
				fmt.Fprintf(out, `%s {"time":"2026-12-07T14:00:00Z","src":"172.30.0.5:%d","proto":"tls","host":"api.example.com","verdict":"allowed","rule":"api.example.com","upstream":"203.0.113.4:443","bytes_up":517,"bytes_down":10240,"duration_ms":12.345,"closed_by":"client"}`+"\n", stamp, 40000+i%20000)
			} else {
				fmt.Fprintf(errw, "%s 2026/12/07 14:00:00 clawker-proxy: reload: policy %d applied\n", stamp, i)
			}
		}
		_ = pw.Close()
	}()
	return pr, nil
}

// frameWriter writes each Write as one frame of the daemon's
// multiplexed stream (8-byte header: stream, 3 zero bytes, big-endian
// length).
type frameWriter struct {
	w      io.Writer
	stream stdcopy.StdType
	buf    []byte
}

func (f *frameWriter) Write(p []byte) (int, error) {
	f.buf = append(f.buf[:0], byte(f.stream), 0, 0, 0)
	f.buf = binary.BigEndian.AppendUint32(f.buf, uint32(len(p)))
	f.buf = append(f.buf, p...)
	if _, err := f.w.Write(f.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// BenchmarkSiblingLines is followed sibling lines, from the (in-memory)
// Docker log stream through the follower's demux, line cutting and
// decoding into the pipeline and a real OTLP receiver over TLS.
// Compare with pkg/netlog's BenchmarkPipeline (ring records, same
// pipeline and receiver).
func BenchmarkSiblingLines(b *testing.B) {
	m := netlogtest.Material(b)
	rcv := netlogtest.NewReceiver(b, m, "127.0.0.1:0")
	rcv.CountOnly()
	rcv.Start(b)
	tc, err := m.NetloggerClientTLSConfig(netlogtest.Pool(m), "")
	if err != nil {
		b.Fatal(err)
	}
	p, err := netlog.New(netlog.Config{Endpoint: rcv.Addr, TLS: tc, HostName: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	d := &memDocker{n: b.N, inFlight: func() uint64 { return p.Stats().InFlight }}
	b.ResetTimer()
	c0 := cpuTime()
	fs := startFollowers(d, []Sibling{{Container: "clawker-proxy", Service: netlog.ServiceProxy}}, &positions{}, p.EmitLine, zap.NewNop())
	deadline := time.Now().Add(5 * time.Minute)
	for p.Stats().Lines < uint64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	fs.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep := p.Drain(ctx)
	cpu := cpuTime() - c0
	b.StopTimer()
	if rep.Lines != uint64(b.N) || rep.Exported != uint64(b.N) || rcv.Count() != b.N || rep.Dropped != 0 {
		b.Fatalf("lines %d exported %d received %d of %d: %+v", rep.Lines, rep.Exported, rcv.Count(), b.N, rep)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(cpu.Microseconds())/1000*10000/float64(b.N), "cpu-ms/10k")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
