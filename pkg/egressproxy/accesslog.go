package egressproxy

import (
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// logLine is the access-log record: one JSON line per connection, written at
// its close, and on a leg the path rules decide (an inspected name, plain
// HTTP with path rules) one more per request (Kind "request", with Method,
// Path and Status), written when it ends.
type logLine struct {
	Time       string   `json:"time"`
	Kind       string   `json:"kind,omitempty"` // "request" for a request line
	Src        string   `json:"src"`
	Proto      string   `json:"proto"`
	Host       string   `json:"host,omitempty"`
	Method     string   `json:"method,omitempty"`
	Path       string   `json:"path,omitempty"`
	Status     int      `json:"status,omitempty"`
	Inspected  bool     `json:"inspected,omitempty"`
	Hosts      []string `json:"hosts,omitempty"` // HTTP: every distinct Host in order, when more than one
	Requests   int      `json:"requests,omitempty"`
	ECH        bool     `json:"ech,omitempty"`
	Verdict    string   `json:"verdict"`
	Rule       string   `json:"rule,omitempty"`
	Reason     string   `json:"reason,omitempty"`
	Upstream   string   `json:"upstream,omitempty"`
	BytesUp    int64    `json:"bytes_up"`
	BytesDown  int64    `json:"bytes_down"`
	DurationMS float64  `json:"duration_ms"`
	ClosedBy   string   `json:"closed_by,omitempty"`
}

// accessLog serialises lines to one writer from one goroutine. Connections
// only enqueue into a bounded channel; when the writer is too slow the line is
// dropped and counted rather than stalling the connection.
type accessLog struct {
	w       io.Writer
	ch      chan []byte
	dropped atomic.Uint64
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex // guards closed against write
	closed  bool
}

// accessLogQueue is how many lines may wait for a slow writer; a var so a
// test can make it tiny.
var accessLogQueue = 4096

func newAccessLog(w io.Writer) *accessLog {
	l := &accessLog{w: w, done: make(chan struct{})}
	if w == nil {
		close(l.done)
		return l
	}
	l.ch = make(chan []byte, accessLogQueue)
	go func() {
		defer close(l.done)
		for b := range l.ch {
			l.w.Write(b)
		}
	}()
	return l
}

func (l *accessLog) write(c *connLog) {
	if l.w == nil {
		return
	}
	line := logLine{
		Time:       c.start.UTC().Format(time.RFC3339Nano),
		Src:        c.src,
		Proto:      c.proto,
		Requests:   c.requests,
		ECH:        c.ech,
		Verdict:    c.verdict,
		Rule:       c.rule,
		Reason:     c.reason,
		Upstream:   c.upstream,
		BytesUp:    c.up,
		BytesDown:  c.down,
		DurationMS: float64(time.Since(c.start).Microseconds()) / 1000,
		ClosedBy:   c.closedBy,
	}
	if len(c.hosts) > 0 {
		line.Host = c.hosts[0]
	}
	if len(c.hosts) > 1 {
		line.Hosts = c.hosts
	}
	line.Inspected = c.inspected
	l.enqueue(line)
}

// requestLog accumulates the fields of one request's line.
type requestLog struct {
	start            time.Time
	src, proto, host string
	method, path     string
	status           int
	verdict, reason  string
	rule             string // the path rule that decided
	denyRule         string // its path, when it is a deny rule
}

func (l *accessLog) writeRequest(r *requestLog) {
	if l.w == nil {
		return
	}
	l.enqueue(logLine{
		Time: r.start.UTC().Format(time.RFC3339Nano), Kind: "request", Src: r.src, Proto: r.proto,
		Host: r.host, Method: r.method, Path: r.path, Status: r.status, Verdict: r.verdict,
		Rule: r.rule, Reason: r.reason, DurationMS: float64(time.Since(r.start).Microseconds()) / 1000,
	})
}

func (l *accessLog) enqueue(line logLine) {
	b, err := json.Marshal(line)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		l.dropped.Add(1)
		return
	}
	select {
	case l.ch <- b:
	default:
		l.dropped.Add(1)
	}
}

// close stops accepting lines and waits (bounded) for the queue to drain.
func (l *accessLog) close() {
	l.once.Do(func() {
		if l.ch == nil {
			return
		}
		l.mu.Lock()
		l.closed = true
		close(l.ch)
		l.mu.Unlock()
	})
	select {
	case <-l.done:
	case <-time.After(2 * time.Second):
	}
}
