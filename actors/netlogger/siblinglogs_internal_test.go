package netlogger

import (
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/pkg/netlog"
)

// A re-attach goes on per stream: the daemon files a stderr line stamped
// before the last stdout line after it (its two copiers race), and that
// line must still be taken once; lines already taken, including ones that
// share a stamp, are not taken again.
func TestReattachKeepsEachStreamsPosition(t *testing.T) {
	base := processStart.Add(time.Second)
	at := func(ms int) string {
		return base.Add(time.Duration(ms) * time.Millisecond).UTC().Format(time.RFC3339Nano)
	}
	var got []string
	f := &follower{sib: Sibling{Container: "sib", Service: netlog.ServiceProxy}, pos: &positions{}, log: zap.NewNop(),
		emit: func(l *netlog.Line) error { got = append(got, string(l.Text)); return nil }}
	type line struct {
		stderr bool
		raw    string
	}
	// The daemon's file, in its order: stamps rise within each stream only.
	file := []line{
		{false, at(10) + " a-0"},
		{false, at(12) + " a-2"},
		{false, at(12) + " a-2b"},
		{true, at(11) + " a-1"},
		{false, at(13) + " a-4"},
		{true, at(14) + " a-3"},
	}
	attach := func(upTo int) {
		t.Helper()
		start := f.pos.get("sib")
		tk := &taker{f: f, id: "c1", start: start, cur: start}
		for _, l := range file[:upTo] {
			// The daemon sends what is at or after since.
			stamp, _, _ := strings.Cut(l.raw, " ")
			ts, err := time.Parse(time.RFC3339Nano, stamp)
			if err != nil {
				t.Fatal(err)
			}
			if ts.Before(start.since()) {
				continue
			}
			tk.take(l.stderr, []byte(l.raw))
		}
	}
	attach(3) // cut after a-2b: stdout is at 12 (twice), stderr not begun
	attach(len(file))
	attach(len(file)) // a third attach takes nothing new
	want := []string{"a-0", "a-2", "a-2b", "a-1", "a-4", "a-3"}
	if !slices.Equal(got, want) {
		t.Fatalf("taken %q, want %q", got, want)
	}
}
