package clawkerfw_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/scripts/dns/clawkerfw"
)

// lockedBuffer is the query log's stdout: the writer goroutine writes, the
// test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Each decided query is one JSON line with exactly the documented fields;
// health probes write none.
func TestQueryLogLines(t *testing.T) {
	out := &lockedBuffer{}
	var ql *clawkerfw.QueryLog
	w := newWorld(t, ptr(baseDoc(1)), func(fw *clawkerfw.Firewall) {
		ql = clawkerfw.NewQueryLog(out)
		fw.QueryLog = ql
	})
	w.ask(t, "udp", "allowed.test", dns.TypeA)
	w.ask(t, "tcp", "unlisted.test", dns.TypeA)
	w.ask(t, "udp", "private.test", dns.TypeA)
	w.ask(t, "udp", "allowed.test", dns.TypeAAAA)
	if m, err := ask("udp", w.udp, clawkerfw.HealthName, dns.TypeTXT, dns.ClassCHAOS); err != nil || len(m.Answer) != 1 {
		t.Fatalf("health: %v %v", m, err)
	}
	w.rep.fail.Store(true)
	w.ask(t, "udp", "mixed.test", dns.TypeA)
	ql.Close()

	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	want := []map[string]any{
		{"client": "127.0.0.1", "name": "allowed.test", "qtype": "A", "verdict": "allowed", "rule_ids": []any{1.0}, "answers": []any{"203.0.113.10"}, "rcode": "NOERROR"},
		{"client": "127.0.0.1", "name": "unlisted.test", "qtype": "A", "verdict": "nxdomain-unlisted", "rcode": "NXDOMAIN"},
		{"client": "127.0.0.1", "name": "private.test", "qtype": "A", "verdict": "refused-answer-floor", "rule_ids": []any{2.0}, "rcode": "NOERROR"},
		{"client": "127.0.0.1", "name": "allowed.test", "qtype": "AAAA", "verdict": "aaaa-empty", "rule_ids": []any{1.0}, "rcode": "NOERROR"},
		{"client": "127.0.0.1", "name": "mixed.test", "qtype": "A", "verdict": "servfail-report", "rule_ids": []any{3.0}, "answers": []any{"203.0.113.11"}, "rcode": "SERVFAIL"},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, line := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d %q: %v", i, line, err)
		}
		ts, _ := got["time"].(string)
		if !strings.HasPrefix(ts, "20") || !strings.HasSuffix(ts, "Z") {
			t.Errorf("line %d time %q", i, got["time"])
		}
		if us, ok := got["duration_us"].(float64); !ok || us < 0 {
			t.Errorf("line %d duration_us %v", i, got["duration_us"])
		}
		delete(got, "time")
		delete(got, "duration_us")
		if !reflect.DeepEqual(got, want[i]) {
			t.Errorf("line %d:\n got %v\nwant %v", i, got, want[i])
		}
	}
	if ql.Dropped() != 0 || ql.Written() != uint64(len(want)) {
		t.Errorf("dropped %d written %d", ql.Dropped(), ql.Written())
	}
}

// A name with quotes, backslashes and control bytes still makes one valid
// JSON line (the name reaches the log before any policy decision).
func TestQueryLogHostileName(t *testing.T) {
	out := &lockedBuffer{}
	var ql *clawkerfw.QueryLog
	w := newWorld(t, ptr(baseDoc(1)), func(fw *clawkerfw.Firewall) {
		ql = clawkerfw.NewQueryLog(out)
		fw.QueryLog = ql
	})
	name := "a\"b\\c\x01\xff.test"
	m, err := ask("udp", w.udp, dns.Fqdn(name), dns.TypeA, dns.ClassINET)
	if err != nil {
		t.Fatal(err)
	}
	wantRcode(t, m, dns.RcodeNameError)
	ql.Close()
	var got map[string]any
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if got["verdict"] != "nxdomain-unlisted" || got["name"] == "" {
		t.Errorf("%v", got)
	}
}
