package clawkerfw

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/cache"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// BenchmarkPluginCachedInProcess: ServeDNS of clawkerfw over the real cache
// plugin, no sockets: the cost the plugin and cache add to a query (the
// "plugin < 1 ms p99" figure of FIREWALL.md).
func BenchmarkPluginCachedInProcess(b *testing.B) {
	upstream := 0
	c := cache.New()
	c.Next = plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		upstream++
		m := new(dns.Msg).SetReply(r)
		m.Answer = []dns.RR{test.A("allowed.test. 60 IN A 203.0.113.10")}
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	})
	fw := New()
	fw.Reporter = AcceptAll
	if err := fw.SetDoc(egressrules.Doc{Generation: 1, Rules: []egressrules.Entry{
		{Rule: egressrules.Rule{Dst: "allowed.test"}, ID: 1},
		{Rule: egressrules.Rule{Dst: ".example.com"}, ID: 2},
	}}); err != nil {
		b.Fatal(err)
	}
	h := &handler{fw: fw, next: c}
	q := new(dns.Msg).SetQuestion("allowed.test.", dns.TypeA)
	rec := &captureWriter{}
	ctx := context.Background()
	h.ServeDNS(ctx, rec, q)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		h.ServeDNS(ctx, rec, q)
		lat = append(lat, time.Since(t0))
	}
	total := time.Since(start)
	b.StopTimer()
	if upstream != 1 || rec.msg == nil || len(rec.msg.Answer) != 1 {
		b.Fatalf("upstream %d, reply %v", upstream, rec.msg)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/total.Seconds(), "queries/s")
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

type captureWriter struct {
	test.ResponseWriter
	msg *dns.Msg
}

func (c *captureWriter) WriteMsg(m *dns.Msg) error {
	c.msg = m
	return nil
}
