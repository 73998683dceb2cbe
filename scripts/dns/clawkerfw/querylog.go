package clawkerfw

import (
	"bufio"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Verdicts of a query-log line: what the plugin decided for the query.
const (
	VerdictAllowed            = "allowed"              // answered from upstream or cache, A records reported
	VerdictAAAAEmpty          = "aaaa-empty"           // an allowed name's AAAA: empty NOERROR (IPv4-only datapath)
	VerdictNXDomainUnlisted   = "nxdomain-unlisted"    // no rule resolves the name: NXDOMAIN, never sent upstream
	VerdictRefusedNoPolicy    = "refused-no-policy"    // no policy loaded yet
	VerdictRefusedClass       = "refused-class"        // a class other than IN
	VerdictRefusedAnswerFloor = "refused-answer-floor" // every A record pointed into a denied range
	VerdictServfailUpstream   = "servfail-upstream"    // nothing came back from cache/forward
	VerdictServfailReport     = "servfail-report"      // the control plane did not confirm the answer
)

// QueryLogBuffer is how many lines may wait for the writer before new
// ones are dropped (and counted); with QueryLogFlushInterval that is
// 400,000 queries/s before a line is lost.
const QueryLogBuffer = 8192

// QueryLogFlushInterval is how often the writer formats, writes and
// flushes what is queued.
const QueryLogFlushInterval = 20 * time.Millisecond

// queryEntry is one decided query, as the reply path hands it over: no
// formatting there, only a copy of what it already holds.
type queryEntry struct {
	time     time.Time
	client   netip.Addr
	name     string
	qtype    uint16
	rcode    int
	verdict  string
	ruleIDs  []uint32 // the policy's slice, read only
	answers  []Answer // the reported answers, read only after Report
	duration time.Duration
}

// QueryLog writes one JSON line per decided query to an io.Writer, off the
// reply path: the path does a non-blocking send to a bounded channel, one
// goroutine wakes every QueryLogFlushInterval, formats what is queued into
// a buffer and flushes it. A full channel drops the line and counts it; a reply never
// waits for the log.
type QueryLog struct {
	ch      chan queryEntry
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	closed  atomic.Bool
	dropped atomic.Uint64
	written atomic.Uint64
}

// NewQueryLog starts the writer goroutine on out; Close stops it.
func NewQueryLog(out io.Writer) *QueryLog {
	q := &QueryLog{ch: make(chan queryEntry, QueryLogBuffer), stop: make(chan struct{}), done: make(chan struct{})}
	go q.run(bufio.NewWriterSize(out, 64<<10))
	return q
}

func (q *QueryLog) add(e queryEntry) {
	if q.closed.Load() {
		q.dropped.Add(1)
		return
	}
	select {
	case q.ch <- e:
	default:
		q.dropped.Add(1)
	}
}

// Dropped is the number of lines lost to a full buffer (or to a closed log).
func (q *QueryLog) Dropped() uint64 { return q.dropped.Load() }

// Written is the number of lines handed to the writer.
func (q *QueryLog) Written() uint64 { return q.written.Load() }

// Close writes what is queued, flushes and stops the writer. Queries
// decided after Close are dropped and counted (the server is stopping).
// The channel is never closed: a reply path racing Close must not panic.
func (q *QueryLog) Close() {
	q.once.Do(func() {
		q.closed.Store(true)
		close(q.stop)
		<-q.done
	})
}

func (q *QueryLog) run(w *bufio.Writer) {
	defer close(q.done)
	var line []byte
	write := func(e *queryEntry) {
		line = appendQueryLine(line[:0], e)
		if w.Available() < len(line) {
			// Whole lines per write: the process's other stdout lines
			// (start-up, counters) must not land inside one.
			w.Flush()
		}
		w.Write(line)
		q.written.Add(1)
	}
	drain := func() {
		for {
			select {
			case e := <-q.ch:
				write(&e)
			default:
				w.Flush()
				return
			}
		}
	}
	// The writer sleeps on a timer, not on the channel: a query's send
	// then never has to wake it (a wake-up per query was most of the
	// cost), and a line waits at most one tick.
	tick := time.NewTicker(QueryLogFlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			drain()
		case <-q.stop:
			drain()
			return
		}
	}
}

// appendQueryLine renders e as one flat JSON object and a newline.
// Empty rule_ids and answers are left out.
func appendQueryLine(b []byte, e *queryEntry) []byte {
	b = append(b, `{"time":"`...)
	b = e.time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","client":"`...)
	if e.client.IsValid() {
		b = e.client.AppendTo(b)
	}
	b = append(b, `","name":`...)
	b = appendJSONString(b, e.name)
	b = append(b, `,"qtype":`...)
	qt, ok := dns.TypeToString[e.qtype]
	if !ok {
		qt = "TYPE" + strconv.Itoa(int(e.qtype))
	}
	b = appendJSONString(b, qt)
	b = append(b, `,"verdict":"`...)
	b = append(b, e.verdict...)
	b = append(b, '"')
	if len(e.ruleIDs) > 0 {
		b = append(b, `,"rule_ids":[`...)
		for i, id := range e.ruleIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, uint64(id), 10)
		}
		b = append(b, ']')
	}
	if len(e.answers) > 0 {
		b = append(b, `,"answers":[`...)
		for i, a := range e.answers {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = a.IP.AppendTo(b)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	b = append(b, `,"rcode":`...)
	rc, ok := dns.RcodeToString[e.rcode]
	if !ok {
		rc = "RCODE" + strconv.Itoa(e.rcode)
	}
	b = appendJSONString(b, rc)
	b = append(b, `,"duration_us":`...)
	b = strconv.AppendInt(b, e.duration.Microseconds(), 10)
	return append(b, "}\n"...)
}

// appendJSONString quotes s for JSON. Query names arrive in presentation
// form (mostly printable ASCII); other bytes are escaped one by one, so a
// hostile name cannot break the line.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c >= 0x7f:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
