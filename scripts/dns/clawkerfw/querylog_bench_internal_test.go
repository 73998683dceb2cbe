package clawkerfw

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/cache"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// BenchmarkQueryLog: ServeDNS of a cached allowed name over the real cache
// plugin, no sockets, with the query log off (nil) and on (writing to
// io.Discard through the writer goroutine): what --query-log adds to a
// query on the reply path. "lost/op" is the share of lines the writer
// dropped because the loop outran it.
func BenchmarkQueryLog(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			c := cache.New()
			c.Next = plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
				m := new(dns.Msg).SetReply(r)
				m.Answer = []dns.RR{test.A("allowed.test. 60 IN A 203.0.113.10")}
				w.WriteMsg(m)
				return dns.RcodeSuccess, nil
			})
			fw := New()
			fw.Reporter = AcceptAll
			if on {
				fw.QueryLog = NewQueryLog(io.Discard)
			}
			if err := fw.SetDoc(egressrules.Doc{Generation: 1, Rules: []egressrules.Entry{
				{Rule: egressrules.Rule{Dst: "allowed.test"}, ID: 1},
			}}); err != nil {
				b.Fatal(err)
			}
			h := &handler{fw: fw, next: c}
			q := new(dns.Msg).SetQuestion("allowed.test.", dns.TypeA)
			rec := &captureWriter{}
			ctx := context.Background()
			h.ServeDNS(ctx, rec, q)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h.ServeDNS(ctx, rec, q)
			}
			b.StopTimer()
			if rec.msg == nil || len(rec.msg.Answer) != 1 {
				b.Fatalf("reply %v", rec.msg)
			}
			if on {
				fw.QueryLog.Close()
				if got := fw.QueryLog.Written() + fw.QueryLog.Dropped(); got != uint64(b.N)+1 {
					b.Fatalf("%d lines written or dropped for %d queries", got, b.N+1)
				}
				b.ReportMetric(float64(fw.QueryLog.Dropped())/float64(b.N+1), "lost/op")
			}
		})
	}
}

// BenchmarkAppendQueryLine: the writer goroutine's formatting of one line
// (off the reply path).
func BenchmarkAppendQueryLine(b *testing.B) {
	e := &queryEntry{time: time.Now(), client: netip.MustParseAddr("10.99.0.5"), name: "allowed.test", qtype: dns.TypeA,
		verdict: VerdictAllowed, ruleIDs: []uint32{1}, answers: []Answer{{IP: netip.MustParseAddr("203.0.113.10")}}, duration: 42 * time.Microsecond}
	var buf []byte
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = appendQueryLine(buf[:0], e)
	}
}
