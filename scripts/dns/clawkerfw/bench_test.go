package clawkerfw_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/scripts/dns/clawkerfw"
)

// countingReporter accepts everything, as fast as a Reporter can.
type countingReporter struct{ n atomic.Int64 }

func (c *countingReporter) Report(_ context.Context, a []clawkerfw.Answer) error {
	c.n.Add(int64(len(a)))
	return nil
}

// reportLatency adds queries/s, p50 and p99 to b from per-query durations.
func reportLatency(b *testing.B, d []time.Duration, total time.Duration) {
	slices.Sort(d)
	b.ReportMetric(float64(len(d))/total.Seconds(), "queries/s")
	b.ReportMetric(float64(d[len(d)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkCachedAllowedUDP: a cached allowed name through the real server
// (errors, clawkerfw, cache, forward) over UDP on loopback, one query at a
// time, so each figure includes two socket round trips of the kernel.
func BenchmarkCachedAllowedUDP(b *testing.B) {
	rep := &countingReporter{}
	w := newWorld(b, ptr(baseDoc(1)), func(fw *clawkerfw.Firewall) { fw.Reporter = rep })
	conn, err := dns.Dial("udp", w.udp)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	q := new(dns.Msg).SetQuestion("allowed.test.", dns.TypeA)
	exchange := func() {
		if err := conn.WriteMsg(q); err != nil {
			b.Fatal(err)
		}
		m, err := conn.ReadMsg()
		if err != nil || len(m.Answer) != 1 {
			b.Fatalf("%v %v", m, err)
		}
	}
	exchange() // fills the cache
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		q.Id = uint16(i)
		exchange()
		lat = append(lat, time.Since(t0))
	}
	total := time.Since(start)
	b.StopTimer()
	reportLatency(b, lat, total)
	if rep.n.Load() != int64(b.N)+1 {
		b.Fatalf("%d reports for %d queries", rep.n.Load(), b.N+1)
	}
	if n := w.up.Count("allowed.test", dns.TypeA); n != 1 {
		b.Fatalf("upstream asked %d times", n)
	}
}

// BenchmarkCachedAllowedParallel: the same with one UDP socket per
// goroutine, GOMAXPROCS goroutines: the throughput of the whole server.
func BenchmarkCachedAllowedParallel(b *testing.B) {
	rep := &countingReporter{}
	w := newWorld(b, ptr(baseDoc(1)), func(fw *clawkerfw.Firewall) { fw.Reporter = rep })
	c := &dns.Client{Timeout: 5 * time.Second}
	q := new(dns.Msg).SetQuestion("allowed.test.", dns.TypeA)
	if _, _, err := c.Exchange(q, w.udp); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := dns.Dial("udp", w.udp)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		m := q.Copy()
		for pb.Next() {
			m.Id = dns.Id()
			if err := conn.WriteMsg(m); err != nil {
				b.Error(err)
				return
			}
			if _, err := conn.ReadMsg(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
}
