package netlog

import (
	"errors"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// ErrClosed is returned by a Source's Read once it is closed.
var ErrClosed = errors.New("netlog: source closed")

// ErrFlushed is returned by a Source's Read once everything pending when
// Flush was called has been read: the drain's end of the ring.
var ErrFlushed = errors.New("netlog: source flushed")

// Source is where raw records come from: the BPF ring buffer in
// production, memory in tests and benchmarks. One goroutine reads.
type Source interface {
	// Read blocks until a record is pending, the deadline passes
	// (os.ErrDeadlineExceeded) or the source is closed (ErrClosed). The
	// bytes are valid until the next Read.
	Read(deadline time.Time) ([]byte, error)
	// Pending is how many bytes wait to be read.
	Pending() int
	// Flush makes Read return what is pending without waiting, then
	// ErrFlushed once.
	Flush() error
	// Close ends a blocked Read and frees the source.
	Close() error
}

// RingSource reads the programs' ring buffer.
type RingSource struct {
	rd  *ringbuf.Reader
	rec ringbuf.Record
}

// NewRingSource opens a reader on the events ring buffer map. Only one
// reader may consume a ring at a time: two would split its records.
func NewRingSource(m *ebpf.Map) (*RingSource, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, err
	}
	return &RingSource{rd: rd}, nil
}

// Read implements Source.
func (s *RingSource) Read(deadline time.Time) ([]byte, error) {
	s.rd.SetDeadline(deadline)
	if err := s.rd.ReadInto(&s.rec); err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil, ErrClosed
		}
		if errors.Is(err, ringbuf.ErrFlushed) {
			return nil, ErrFlushed
		}
		return nil, err
	}
	return s.rec.RawSample, nil
}

// Pending implements Source.
func (s *RingSource) Pending() int { return s.rd.AvailableBytes() }

// Flush implements Source.
func (s *RingSource) Flush() error { return s.rd.Flush() }

// Close implements Source.
func (s *RingSource) Close() error { return s.rd.Close() }

// MemSource is a Source over records put in memory: the tests' and
// benchmarks' stand-in for the ring, with the ring's semantics (a bounded
// number of pending records; Put refuses beyond it, as a full ring makes
// the programs' reserve fail).
type MemSource struct {
	mu      sync.Mutex
	cond    *sync.Cond
	q       [][]byte
	cap     int
	closed  bool
	flushed bool
	refused uint64
	cur     []byte
}

// NewMemSource returns a source holding at most capacity records.
func NewMemSource(capacity int) *MemSource {
	s := &MemSource{cap: capacity}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Put queues records; those beyond capacity are refused and counted.
func (s *MemSource) Put(recs ...[]byte) (accepted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		if len(s.q) >= s.cap || s.closed {
			s.refused++
			continue
		}
		s.q = append(s.q, r)
		accepted++
	}
	s.cond.Broadcast()
	return accepted
}

// Refused counts records Put did not take.
func (s *MemSource) Refused() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// Read implements Source.
func (s *MemSource) Read(deadline time.Time) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t *time.Timer
	for len(s.q) == 0 && !s.closed {
		if s.flushed {
			s.flushed = false
			return nil, ErrFlushed
		}
		d := time.Until(deadline)
		if d <= 0 {
			return nil, os.ErrDeadlineExceeded
		}
		if t == nil {
			t = time.AfterFunc(d, func() {
				s.mu.Lock()
				s.cond.Broadcast()
				s.mu.Unlock()
			})
			defer t.Stop()
		}
		s.cond.Wait()
	}
	if s.closed {
		return nil, ErrClosed
	}
	s.cur, s.q = s.q[0], s.q[1:]
	if len(s.q) == 0 {
		s.q = nil // let the backing array go
	}
	return s.cur, nil
}

// Pending implements Source.
func (s *MemSource) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q) * RecordSize
}

// Flush implements Source.
func (s *MemSource) Flush() error {
	s.mu.Lock()
	s.flushed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// Close implements Source; records still queued are not read.
func (s *MemSource) Close() error {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}
