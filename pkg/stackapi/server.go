package stackapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Answer is one A record the DNS sibling is about to hand an agent: the
// name the agent asked for, the address, the allow rules that let the name
// resolve, and the record's TTL in seconds.
type Answer struct {
	Name    string     `json:"name"`
	IP      netip.Addr `json:"ip"`
	RuleIDs []uint32   `json:"rule_ids"`
	TTL     uint32     `json:"ttl"`
}

// AnswerSink takes the answers of one DNS reply; the reply leaves only
// after it returned nil, so it must make the addresses known to the
// kernel before it returns.
type AnswerSink func(ctx context.Context, from string, answers []Answer) error

// Paths of the service.
const (
	PolicyPath  = "/v1/policy"
	AnswersPath = "/v1/answers"
)

// pollHold is how long a policy request waits for a change before it is
// answered 204; the sibling asks again at once.
const pollHold = 25 * time.Second

// presence is how long after its last policy request a sibling still
// counts as connected for WaitApplied: a little longer than the gap
// between two requests of a live sibling.
const presence = 3 * time.Second

// Server holds the current policy and the siblings' acknowledgements. It
// is safe for concurrent use: the firewall actor publishes, HTTP handler
// goroutines read.
type Server struct {
	sink     AnswerSink
	expected []string

	mu       sync.Mutex
	doc      egressrules.Doc
	has      bool
	changed  chan struct{} // closed when a newer doc is published
	clients  map[string]*clientState
	progress chan struct{} // closed when any acknowledgement changes
	refusals RefusalSink
	// inspectCA is the firewall CA the proxy fetches (nil: none yet); a
	// change closes changed too, which wakes the proxy's poll.
	inspectCA *InspectCA
}

type clientState struct {
	applied  uint64
	inFlight int
	lastSeen time.Time
}

// NewServer returns a server whose answers go to sink and whose
// WaitApplied waits for the siblings named in expected.
func NewServer(sink AnswerSink, expected ...string) *Server {
	return &Server{
		sink:     sink,
		expected: expected,
		changed:  make(chan struct{}),
		clients:  make(map[string]*clientState),
		progress: make(chan struct{}),
	}
}

// Publish makes doc the current policy; siblings waiting for a change get
// it at once.
func (s *Server) Publish(doc egressrules.Doc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc, s.has = doc, true
	close(s.changed)
	s.changed = make(chan struct{})
}

// Current returns the published policy (false before the first).
func (s *Server) Current() (egressrules.Doc, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doc, s.has
}

// Applied is, per sibling, the newest generation it said it applied.
func (s *Server) Applied() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.clients))
	for name, c := range s.clients {
		out[name] = c.applied
	}
	return out
}

// WaitApplied returns once every expected sibling that is connected has
// applied generation gen or a newer one. A sibling that is not connected
// is not waited for: while it is down it passes nothing, and when it comes
// back it fetches the newest policy before it serves.
func (s *Server) WaitApplied(ctx context.Context, gen uint64) error {
	for {
		s.mu.Lock()
		pending := ""
		now := time.Now()
		for _, name := range s.expected {
			c := s.clients[name]
			if c == nil || c.applied >= gen {
				continue
			}
			if c.inFlight > 0 || now.Sub(c.lastSeen) < presence {
				pending = name
				break
			}
		}
		progress := s.progress
		s.mu.Unlock()
		if pending == "" {
			return nil
		}
		select {
		case <-progress:
		case <-time.After(250 * time.Millisecond): // a sibling may drop out of presence
		case <-ctx.Done():
			return fmt.Errorf("%s has not applied policy generation %d: %w", pending, gen, ctx.Err())
		}
	}
}

func (s *Server) seen(name string, applied uint64, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[name]
	if c == nil {
		c = &clientState{}
		s.clients[name] = c
	}
	if applied > c.applied || delta > 0 {
		// A restarted sibling says 0: what it runs now is what counts.
		c.applied = applied
	}
	c.inFlight += delta
	c.lastSeen = time.Now()
	close(s.progress)
	s.progress = make(chan struct{})
}

// Handler serves the two paths. The TLS layer (ServerTLS) already refused
// any client the stack CA did not sign; the handlers tell the siblings
// apart by their certificate's common name.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PolicyPath, s.servePolicy)
	mux.HandleFunc("POST "+AnswersPath, s.serveAnswers)
	mux.HandleFunc("POST "+RefusalsPath, s.serveRefusals)
	mux.HandleFunc("GET "+InspectCAPath, s.serveInspectCA)
	return mux
}

func peerName(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].Subject.CommonName
}

// servePolicy answers GET /v1/policy?applied=G: the current policy at once
// when its generation is not G, otherwise when it changes (or 204 after
// pollHold). G is also the sibling's acknowledgement: it asks only after
// it applied G. The proxy also names the firewall CA it holds (ca=FP): it
// is answered at once when the current one differs, with the current
// fingerprint in InspectCAHeader (on every answer to the proxy).
func (s *Server) servePolicy(w http.ResponseWriter, r *http.Request) {
	name := peerName(r)
	if name != DNSClient && name != ProxyClient {
		http.Error(w, "not a firewall sibling", http.StatusForbidden)
		return
	}
	applied, _ := strconv.ParseUint(r.URL.Query().Get("applied"), 10, 64)
	heldCA, proxy := r.URL.Query().Get("ca"), name == ProxyClient
	s.seen(name, applied, +1)
	defer s.seen(name, applied, -1)

	hold := time.NewTimer(pollHold)
	defer hold.Stop()
	for {
		s.mu.Lock()
		doc, has, changed, ca := s.doc, s.has, s.changed, fingerprint(s.inspectCA)
		s.mu.Unlock()
		if proxy {
			w.Header().Set(InspectCAHeader, ca)
		}
		if has && (doc.Generation != applied || (proxy && ca != heldCA)) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(doc)
			return
		}
		select {
		case <-changed:
		case <-hold.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done():
			return
		}
	}
}

type answersBody struct {
	Answers []Answer `json:"answers"`
}

// maxAnswers bounds one report: a DNS reply of 64 KiB holds fewer A
// records than this.
const maxAnswers = 4096

func (s *Server) serveAnswers(w http.ResponseWriter, r *http.Request) {
	name := peerName(r)
	if name != DNSClient {
		http.Error(w, "only the DNS sibling reports answers", http.StatusForbidden)
		return
	}
	var body answersBody
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		http.Error(w, "bad answers: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body.Answers) > maxAnswers {
		http.Error(w, "too many answers", http.StatusRequestEntityTooLarge)
		return
	}
	for _, a := range body.Answers {
		if !a.IP.Is4() {
			http.Error(w, "answer "+a.Name+": not an IPv4 address", http.StatusBadRequest)
			return
		}
	}
	if err := s.sink(r.Context(), name, body.Answers); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ErrNoPolicy is what a sibling's watcher reports before its first policy.
var ErrNoPolicy = errors.New("no policy from the control plane yet")
