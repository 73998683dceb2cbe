package clawkerfw

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// gatedWriter blocks every Write until open is closed: a stdout nobody reads.
type gatedWriter struct {
	open chan struct{}
	mu   sync.Mutex
	b    bytes.Buffer
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.Write(p)
}

// A stuck stdout never holds up the reply path: past the buffer, lines are
// dropped and counted, and every line is either written or counted.
func TestQueryLogDropsInsteadOfBlocking(t *testing.T) {
	g := &gatedWriter{open: make(chan struct{})}
	q := NewQueryLog(g)
	const n = 3 * QueryLogBuffer
	for i := 0; i < n; i++ {
		q.add(queryEntry{time: time.Unix(0, 0), name: "x.test", verdict: VerdictAllowed}) // returns at once, or the test hangs
	}
	if q.Dropped() == 0 {
		t.Fatal("nothing dropped behind a stuck writer")
	}
	close(g.open)
	q.Close()
	q.add(queryEntry{name: "after.test"}) // after Close: counted, no panic
	lines := uint64(bytes.Count(g.b.Bytes(), []byte("\n")))
	if lines != q.Written() || lines+q.Dropped() != n+1 {
		t.Errorf("%d lines, written %d, dropped %d, of %d", lines, q.Written(), q.Dropped(), n+1)
	}
}

func TestAppendQueryLineGolden(t *testing.T) {
	got := string(appendQueryLine(nil, &queryEntry{
		time: time.Date(2026, 12, 7, 15, 4, 5, 123456789, time.UTC), name: "allowed.test", qtype: 1,
		rcode: 0, verdict: VerdictAllowed, ruleIDs: []uint32{1, 7}, duration: 1500 * time.Microsecond,
		answers: []Answer{{IP: netip.MustParseAddr("203.0.113.10")}, {IP: netip.MustParseAddr("203.0.113.11")}}, client: netip.MustParseAddr("10.99.0.5"),
	}))
	want := `{"time":"2026-12-07T15:04:05.123456789Z","client":"10.99.0.5","name":"allowed.test","qtype":"A","verdict":"allowed","rule_ids":[1,7],"answers":["203.0.113.10","203.0.113.11"],"rcode":"NOERROR","duration_us":1500}` + "\n"
	if got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
}
