package netlog_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log"

	"github.com/clawker/clawker-cp/pkg/netlog"
)

// A connection line as pkg/egressproxy writes it (its logLine's JSON).
const accessLine = `{"time":"2026-12-07T14:01:02.123456Z","src":"172.30.0.5:41000","proto":"tls","host":"api.example.com","hosts":["api.example.com","b.example.com"],"requests":3,"verdict":"allowed","rule":"api.example.com","upstream":"203.0.113.4:443","bytes_up":517,"bytes_down":10240,"duration_ms":12.345,"inspected":true,"closed_by":"client"}`

func attrsOf(r *log.Record) []attribute.KeyValue {
	var out []attribute.KeyValue
	r.WalkAttributes(func(kv attribute.KeyValue) bool { out = append(out, kv); return true })
	return out
}

func TestAccessLineGolden(t *testing.T) {
	at := time.Date(2026, 12, 7, 14, 1, 2, 200000000, time.UTC)
	var r log.Record
	netlog.BuildLine(&r, &netlog.Line{Service: netlog.ServiceProxy, ContainerID: "c0ffee", Time: at, Text: []byte(accessLine)}, at.Add(time.Millisecond))
	want := []attribute.KeyValue{
		attribute.String("log.iostream", "stdout"),
		attribute.String("container.id", "c0ffee"),
		attribute.String("time", "2026-12-07T14:01:02.123456Z"),
		attribute.String("src", "172.30.0.5:41000"),
		attribute.String("proto", "tls"),
		attribute.String("host", "api.example.com"),
		attribute.StringSlice("hosts", []string{"api.example.com", "b.example.com"}),
		attribute.Int64("requests", 3),
		attribute.String("verdict", "allowed"),
		attribute.String("rule", "api.example.com"),
		attribute.String("upstream", "203.0.113.4:443"),
		attribute.Int64("bytes_up", 517),
		attribute.Int64("bytes_down", 10240),
		attribute.Float64("duration_ms", 12.345),
		attribute.Bool("inspected", true),
		attribute.String("closed_by", "client"),
	}
	if got := attrsOf(&r); !reflect.DeepEqual(got, want) {
		t.Fatalf("attributes\n got %v\nwant %v", got, want)
	}
	if r.EventName() != netlog.EventProxyConnection || !r.Timestamp().Equal(at) || r.Severity() != log.SeverityInfo || r.Body().Type() != attribute.INVALID {
		t.Fatalf("event %q ts %v severity %v body %v", r.EventName(), r.Timestamp(), r.Severity(), r.Body())
	}

	// A request line is its own event.
	var rq log.Record
	netlog.BuildLine(&rq, &netlog.Line{Service: netlog.ServiceProxy, Time: at,
		Text: []byte(`{"time":"2026-12-07T14:01:02Z","kind":"request","src":"172.30.0.5:41000","proto":"https","host":"api.example.com","method":"GET","path":"/v1/x","status":403,"verdict":"denied","reason":"path","bytes_up":0,"bytes_down":0,"duration_ms":0.5}`)}, at)
	if rq.EventName() != netlog.EventProxyRequest {
		t.Fatalf("request line: event %q", rq.EventName())
	}
	got := map[string]attribute.Value{}
	for _, kv := range attrsOf(&rq) {
		got[string(kv.Key)] = kv.Value
	}
	if got["status"].AsInt64() != 403 || got["method"].AsString() != "GET" || got["kind"].AsString() != "request" || got["duration_ms"].AsFloat64() != 0.5 {
		t.Fatalf("request attributes %v", got)
	}
}

// A query line as clawker-dns --query-log writes it
// (scripts/dns/clawkerfw appendQueryLine).
const queryLine = `{"time":"2026-12-07T14:01:02.123456789Z","client":"172.30.0.5","name":"api.example.com","qtype":"A","verdict":"allowed","rule_ids":[1,7],"answers":["203.0.113.4","203.0.113.5"],"rcode":"NOERROR","duration_us":1500}`

func TestQueryLineGolden(t *testing.T) {
	at := time.Date(2026, 12, 7, 14, 1, 2, 200000000, time.UTC)
	var r log.Record
	netlog.BuildLine(&r, &netlog.Line{Service: netlog.ServiceDNS, ContainerID: "d0d0", Time: at, Text: []byte(queryLine)}, at.Add(time.Millisecond))
	want := []attribute.KeyValue{
		attribute.String("log.iostream", "stdout"),
		attribute.String("container.id", "d0d0"),
		attribute.String("time", "2026-12-07T14:01:02.123456789Z"),
		attribute.String("client", "172.30.0.5"),
		attribute.String("name", "api.example.com"),
		attribute.String("qtype", "A"),
		attribute.String("verdict", "allowed"),
		attribute.Int64Slice("rule_ids", []int64{1, 7}),
		attribute.StringSlice("answers", []string{"203.0.113.4", "203.0.113.5"}),
		attribute.String("rcode", "NOERROR"),
		attribute.Int64("duration_us", 1500),
	}
	if got := attrsOf(&r); !reflect.DeepEqual(got, want) {
		t.Fatalf("attributes\n got %v\nwant %v", got, want)
	}
	if r.EventName() != netlog.EventDNSQuery || !r.Timestamp().Equal(at) || r.Severity() != log.SeverityInfo || r.Body().Type() != attribute.INVALID {
		t.Fatalf("event %q ts %v severity %v body %v", r.EventName(), r.Timestamp(), r.Severity(), r.Body())
	}
	// A refused query's line has no rule_ids or answers.
	var nx log.Record
	netlog.BuildLine(&nx, &netlog.Line{Service: netlog.ServiceDNS, Time: at,
		Text: []byte(`{"time":"2026-12-07T14:01:02Z","client":"172.30.0.5","name":"x.test","qtype":"AAAA","verdict":"nxdomain-unlisted","rcode":"NXDOMAIN","duration_us":3}`)}, at)
	got := map[string]attribute.Value{}
	for _, kv := range attrsOf(&nx) {
		got[string(kv.Key)] = kv.Value
	}
	if nx.EventName() != netlog.EventDNSQuery || got["verdict"].AsString() != "nxdomain-unlisted" || got["rcode"].AsString() != "NXDOMAIN" || len(got) != 8 {
		t.Fatalf("nxdomain line: event %q attributes %v", nx.EventName(), got)
	}
	// The same line from the proxy is no query: a proxy connection line.
	var px log.Record
	netlog.BuildLine(&px, &netlog.Line{Service: netlog.ServiceProxy, Time: at, Text: []byte(queryLine)}, at)
	if px.EventName() != netlog.EventProxyConnection {
		t.Fatalf("proxy: event %q", px.EventName())
	}
}

func TestOtherLinesAreText(t *testing.T) {
	at := time.Unix(1800000000, 5)
	for _, c := range []struct {
		svc    string
		stderr bool
		text   string
		sev    log.Severity
	}{
		// The proxy's diagnostics (Go's log package) and a stdout line that
		// is not an object: text, INFO.
		{netlog.ServiceProxy, true, "2026/12/07 14:00:00 clawker-proxy: listening on :15001", log.SeverityInfo},
		{netlog.ServiceProxy, false, `{"time":"x","nested":{"a":1}}`, log.SeverityInfo},
		{netlog.ServiceProxy, false, `{"src":"a"} trailing`, log.SeverityInfo},
		{netlog.ServiceProxy, false, `{"hosts":["a",1]}`, log.SeverityInfo}, // a mixed array
		// A JSON object on the DNS sibling's stream is not an access line,
		// nor a query line without qtype and verdict.
		{netlog.ServiceDNS, false, `{"src":"a"}`, log.SeverityInfo},
		{netlog.ServiceDNS, false, `{"name":"a.test","verdict":"allowed"}`, log.SeverityInfo},
		// Stated levels are trusted; words mid-line are not.
		{netlog.ServiceDNS, true, "[ERROR] plugin/forward: no upstream", log.SeverityError},
		{netlog.ServiceDNS, true, "[WARNING] slow upstream", log.SeverityWarn},
		{netlog.ServiceDNS, true, "[INFO] 172.30.0.5:5353 - 1 \"A IN x.\"", log.SeverityInfo},
		{netlog.ServiceDNS, true, `time=x level=debug msg=hi`, log.SeverityDebug},
		{netlog.ServiceDNS, true, `{"level":"warn","msg":"x"}`, log.SeverityWarn},
		{netlog.ServiceDNS, true, "panic: runtime error: index out of range", log.SeverityFatal},
		{netlog.ServiceDNS, true, "clawker-dns: reload failed: error reading policy", log.SeverityInfo},
	} {
		var r log.Record
		netlog.BuildLine(&r, &netlog.Line{Service: c.svc, Stderr: c.stderr, Time: at, Text: []byte(c.text)}, at)
		if r.Body().AsString() != c.text || r.Severity() != c.sev || r.EventName() != "" {
			t.Errorf("%s %q: body %q severity %v event %q", c.svc, c.text, r.Body().AsString(), r.Severity(), r.EventName())
		}
		stream := attrsOf(&r)[0]
		if want := map[bool]string{true: "stderr", false: "stdout"}[c.stderr]; stream.Value.AsString() != want {
			t.Errorf("%q: %v", c.text, stream)
		}
	}
}

// Sibling lines go out on the ring's pipeline with their own service.name,
// counted as Lines, Emitted and Exported.
func TestLinesReachReceiverAsTheirService(t *testing.T) {
	cfg, rcv, _ := tlsConfig(t)
	rcv.Start(t)
	cfg.Endpoint = rcv.Addr
	cfg.ExportInterval = 20 * time.Millisecond
	p := start(t, cfg, netlog.NewMemSource(10))
	at := time.Unix(1800000000, 0)
	for _, l := range []netlog.Line{
		{Service: netlog.ServiceProxy, Time: at, Text: []byte(accessLine)},
		{Service: netlog.ServiceDNS, Stderr: true, Time: at, Text: []byte("[INFO] hello")},
	} {
		if err := p.EmitLine(&l); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.EmitLine(&netlog.Line{Service: "ebpf-egress"}); err != netlog.ErrUnknownService {
		t.Fatalf("a line of no sibling: %v", err)
	}
	if err := rcv.WaitCount(2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	recs := rcv.Records()
	bySvc := map[string]string{}
	for _, r := range recs {
		bySvc[r.Service] = r.Scope
		if r.Host != "test-host" {
			t.Errorf("host %q", r.Host)
		}
	}
	if bySvc[netlog.ServiceProxy] != netlog.SiblingScopeName || bySvc[netlog.ServiceDNS] != netlog.SiblingScopeName {
		t.Fatalf("records %v", recs)
	}
	for _, r := range recs {
		if r.Service == netlog.ServiceProxy && (r.Attrs["verdict"] != "allowed" || r.Attrs["bytes_down"] != int64(10240) || r.Log.EventName != netlog.EventProxyConnection) {
			t.Errorf("proxy record %v", r.Attrs)
		}
		if r.Service == netlog.ServiceDNS && r.Log.Body.GetStringValue() != "[INFO] hello" {
			t.Errorf("dns record body %v", r.Log.Body)
		}
	}
	st := waitStats(p, func(s netlog.Stats) bool { return s.Exported == 2 })
	if st.Lines != 2 || st.Emitted != 2 || st.Exported != 2 || st.Read != 0 {
		t.Fatalf("stats %+v", st)
	}
	// After the drain a line is dropped and counted, never emitted into a
	// stopped processor.
	p.Drain(context.Background())
	_ = p.EmitLine(&netlog.Line{Service: netlog.ServiceDNS, Time: at, Text: []byte("late")})
	if st := p.Stats(); st.Lines != 3 || st.Dropped != 1 || st.Emitted != 2 {
		t.Fatalf("after drain %+v", st)
	}
}
