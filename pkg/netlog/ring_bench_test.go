package netlog_test

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

// ringRig is the real programs on a cgroup of the benchmark's own, with
// events on and no rate limit: filling the ring is a loop of denied UDP
// sends from inside the cgroup.
type ringRig struct {
	cg     string
	events *ebpf.Map
	cgid   uint64
}

func newRingRig(b *testing.B) *ringRig {
	b.Helper()
	pinDir := cptest.TestPinDir(b)
	root, err := egress.Cgroup2Mount()
	if err != nil {
		b.Skip("no cgroup v2: " + err.Error())
	}
	cg := filepath.Join(root, cptest.TestPinDirPrefix+cptest.NewRunID())
	if err := os.Mkdir(cg, 0o755); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		for i := 0; i < 50 && os.Remove(cg) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	cgid, err := egress.CgroupID(cg)
	if err != nil {
		b.Fatal(err)
	}
	m, err := egress.Open(pinDir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	if err := m.AttachCgroup(cg); err != nil {
		b.Fatal(err)
	}
	if err := m.Enroll(cgid, egress.Config{
		Proxy: netip.MustParseAddrPort("127.0.0.2:3128"), DNS: netip.MustParseAddrPort("127.0.0.3:53"),
		EnforceLoopback: true, Events: true, EventRate: 1_000_000_000, EventBurst: 1_000_000,
	}); err != nil {
		b.Fatal(err)
	}
	events, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.EgressMapEvents), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = events.Close() })
	return &ringRig{cg: cg, events: events, cgid: cgid}
}

// capacity is how many records the ring holds (each has an 8-byte header).
func (r *ringRig) capacity() int { return int(r.events.MaxEntries())/(netlog.RecordSize+8) - 16 }

// fill makes n denied sends from inside the cgroup: n records in the ring.
// The process is in the cgroup only meanwhile, so nothing else it does
// (the pipeline's gRPC connection) is enforced.
func (r *ringRig) fill(b *testing.B, n int) {
	b.Helper()
	orig := ownCgroup(b)
	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(filepath.Join(r.cg, "cgroup.procs"), pid, 0); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0); err != nil {
			b.Fatal(err)
		}
	}()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet4{Port: 9999, Addr: [4]byte{127, 0, 0, 9}}
	for range n {
		_ = unix.Sendto(fd, []byte("x"), 0, sa) // EPERM: one event each
	}
}

func ownCgroup(b *testing.B) string {
	b.Helper()
	root, err := egress.Cgroup2Mount()
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join(root, rest)
		}
	}
	return root
}

// BenchmarkRingToReceiver is the egress event log end to end: records the
// real programs wrote into the real ring, read, decoded, enriched and
// exported over TLS to a real OTLP receiver (counting, in this process),
// beside the raw read of the same ring (ReadInto, nothing else). One op is
// one record; the ring is filled with the timer stopped, a ring's worth
// at a time, and each round's pipeline is connected before the timer
// starts, so the figure is the drain of a full ring.
func BenchmarkRingToReceiver(b *testing.B) {
	r := newRingRig(b)
	chunk := r.capacity()
	b.Run("raw-readinto", func(b *testing.B) {
		var rec ringbuf.Record
		for done := 0; done < b.N; {
			n := min(chunk, b.N-done)
			b.StopTimer()
			r.fill(b, n)
			rd, err := ringbuf.NewReader(r.events)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			for range n {
				if err := rd.ReadInto(&rec); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			rd.Close()
			done += n
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("pipeline", func(b *testing.B) {
		cfg, rcv, w := tlsConfigB(b)
		rcv.CountOnly()
		rcv.Start(b)
		cfg.Endpoint = rcv.Addr
		cfg.Buffer = chunk // a ring's worth in flight: the figure is throughput, not the drop bound
		// A round ends with a partial batch, which would wait out the 1s
		// interval: a sustained stream never waits for it.
		cfg.ExportInterval = 5 * time.Millisecond
		w.snap.Store(&netlog.Snapshot{AsOf: time.Now().Add(time.Hour), Cgroups: map[uint64]netlog.Identity{r.cgid: {ContainerID: ctrID, Project: "myapp", Agent: "dev"}}})
		var cpu time.Duration
		for done := 0; done < b.N; {
			n := min(chunk, b.N-done)
			b.StopTimer()
			r.fill(b, n)
			p, err := netlog.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			w.waitUp(b, true)
			src, err := netlog.NewRingSource(r.events)
			if err != nil {
				b.Fatal(err)
			}
			want := rcv.Count() + n
			c0 := cpuTime()
			b.StartTimer()
			if err := p.Start(src); err != nil {
				b.Fatal(err)
			}
			for rcv.Count() < want {
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			cpu += cpuTime() - c0
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			rep := p.Drain(ctx)
			cancel()
			if rep.Read != uint64(n) || rep.Exported != uint64(n) || rep.Dropped != 0 {
				b.Fatalf("round of %d: %+v", n, rep)
			}
			done += n
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		b.ReportMetric(float64(cpu.Microseconds())/1000*10000/float64(b.N), "cpu-ms/10k")
	})
}
