package stackapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// Refusal is one thing a sibling refused an agent: a name the DNS sibling
// answered NXDOMAIN for, a connection the proxy refused. The control plane
// keeps recent ones in memory for `clawker firewall denied`.
type Refusal struct {
	Time   time.Time `json:"time"`
	Src    string    `json:"src"`             // the agent's address (ip or ip:port)
	Name   string    `json:"name"`            // the name, SNI or Host
	Proto  string    `json:"proto,omitempty"` // proxy: https, http, other
	Reason string    `json:"reason"`
	// Where is "path" for a request the proxy refused by an inspected
	// name's path rules (Method and Path name it, Allow is the command
	// its 403 named); empty otherwise.
	Where  string `json:"where,omitempty"`
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Allow  string `json:"allow,omitempty"`
}

// RefusalsPath is where siblings post refusals.
const RefusalsPath = "/v1/refusals"

// RefusalSink takes one batch; it must not block (the window is in memory).
type RefusalSink func(from string, rs []Refusal)

// OnRefusals sets where reported refusals go (none: they are accepted and
// dropped).
func (s *Server) OnRefusals(sink RefusalSink) {
	s.mu.Lock()
	s.refusals = sink
	s.mu.Unlock()
}

const maxRefusals = 1024

func (s *Server) serveRefusals(w http.ResponseWriter, r *http.Request) {
	name := peerName(r)
	if name != DNSClient && name != ProxyClient {
		http.Error(w, "not a firewall sibling", http.StatusForbidden)
		return
	}
	var body struct {
		Refusals []Refusal `json:"refusals"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil || len(body.Refusals) > maxRefusals {
		http.Error(w, fmt.Sprintf("bad refusals (at most %d): %v", maxRefusals, err), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	sink := s.refusals
	s.mu.Unlock()
	if sink != nil {
		sink(name, body.Refusals)
	}
	w.WriteHeader(http.StatusNoContent)
}

// RefusalQueue batches a sibling's refusals to the control plane off the
// request path: Add never blocks; a full queue drops and counts.
type RefusalQueue struct {
	c       *Client
	ch      chan Refusal
	Dropped atomic.Uint64
}

// NewRefusalQueue starts the sender; it runs until ctx ends.
func NewRefusalQueue(ctx context.Context, c *Client) *RefusalQueue {
	q := &RefusalQueue{c: c, ch: make(chan Refusal, 4096)}
	go q.run(ctx)
	return q
}

// Add queues one refusal.
func (q *RefusalQueue) Add(r Refusal) {
	select {
	case q.ch <- r:
	default:
		q.Dropped.Add(1)
	}
}

func (q *RefusalQueue) run(ctx context.Context) {
	var batch []Refusal
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	send := func() {
		if len(batch) == 0 {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := q.c.reportRefusals(sctx, batch); err != nil {
			q.Dropped.Add(uint64(len(batch)))
			q.c.logf("refusals not reported (%d dropped): %v", len(batch), err)
		}
		cancel()
		batch = batch[:0]
	}
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-q.ch:
			batch = append(batch, r)
			if len(batch) >= 256 {
				send()
			}
		case <-tick.C:
			send()
		}
	}
}

func (c *Client) reportRefusals(ctx context.Context, rs []Refusal) error {
	body, err := json.Marshal(struct {
		Refusals []Refusal `json:"refusals"`
	}{rs})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+RefusalsPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
