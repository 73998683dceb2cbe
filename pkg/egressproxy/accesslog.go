package egressproxy

import (
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// logLine is the access-log record: one JSON line per connection, written at
// its close.
type logLine struct {
	Time       string   `json:"time"`
	Src        string   `json:"src"`
	Proto      string   `json:"proto"`
	Host       string   `json:"host,omitempty"`
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
