package egressproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Resolver resolves an allowed name. The main wires a net.Resolver whose Dial
// goes to the DNS sibling, so the sibling sees (and records) every answer the
// proxy uses.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Config configures a Server. Zero values get the defaults noted.
type Config struct {
	Resolver Resolver // required for any connection to be allowed
	// Dial dials the checked upstream IP:port; default a net.Dialer. It should
	// return a *net.TCPConn, or splice cannot be used.
	Dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	PeekTimeout time.Duration // first bytes / ClientHello / request headers; default 5 s
	DialTimeout time.Duration // resolution, and each dial attempt; default 5 s
	AccessLog   io.Writer     // one JSON line per connection; default discarded
	Logf        func(format string, args ...any)
	// OnDenied, when set, is told about every refused connection at its
	// close, and about every refused request of an inspected name at once
	// (for `clawker firewall denied`); it must not block.
	OnDenied func(Denial)
	// UpstreamRoots verify the upstream's certificate on an inspected leg:
	// the system roots plus firewall.upstream_ca. Nil: the system pool.
	UpstreamRoots *x509.CertPool
}

// WherePath is Denial.Where for a request refused by a name's path rules.
const WherePath = "path"

// Denial is one refused connection, as OnDenied sees it.
type Denial struct {
	Time   time.Time
	Src    string // the agent's ip:port
	Proto  string // https, http or other
	Host   string // SNI or Host; empty when none was read
	Reason string
	// Where is WherePath for a request the path rules refused (Method and
	// Path name it, Allow is the command that would allow it); empty for
	// a refused connection.
	Where, Method, Path, Allow string
}

// Stats are cumulative counters plus the live connection count.
type Stats struct {
	Accepted         uint64 `json:"accepted"`
	Active           int    `json:"connections"`
	Allowed          uint64 `json:"allowed"`
	Denied           uint64 `json:"denied"`
	Errors           uint64 `json:"errors"`
	ClosedByPolicy   uint64 `json:"closed_by_policy"`
	LogDropped       uint64 `json:"log_dropped"`
	PathDenied       uint64 `json:"path_denied"` // requests refused on inspected legs
	LeavesMinted     uint64 `json:"leaves_minted"`
	PolicyGeneration uint64 `json:"policy_generation"`
	PolicyLoaded     bool   `json:"policy_loaded"`
}

// Server is the catch-all egress proxy. Create it with New.
type Server struct {
	cfg    Config
	policy atomic.Pointer[egressrules.Policy]
	log    *accessLog

	mu        sync.Mutex
	conns     map[*liveConn]struct{}
	listeners map[net.Listener]struct{}
	closed    bool
	wg        sync.WaitGroup // connection goroutines

	accepted, allowed, denied, errs, policyClosed atomic.Uint64

	routed     routedSet // dedicated listeners of routed rules (routed.go)
	pathDenied atomic.Uint64

	leaves   leafCache              // inspection leaves of the firewall CA
	sessions tls.ClientSessionCache // upstream TLS sessions of inspected legs
}

// New returns a Server with no policy: it refuses everything until SetPolicy.
func New(cfg Config) *Server {
	if cfg.Dial == nil {
		d := &net.Dialer{}
		cfg.Dial = d.DialContext
	}
	if cfg.PeekTimeout <= 0 {
		cfg.PeekTimeout = 5 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	return &Server{
		sessions:  tls.NewLRUClientSessionCache(256),
		cfg:       cfg,
		log:       newAccessLog(cfg.AccessLog),
		conns:     map[*liveConn]struct{}{},
		listeners: map[net.Listener]struct{}{},
	}
}

// liveConn is the registry entry of one connection. client and upstream are
// the bare conns the splice goroutines use: the registry closes them directly
// rather than wrapping them, so splice stays available.
type liveConn struct {
	client   net.Conn
	upstream net.Conn   // guarded by Server.mu
	src      netip.Addr // the client's address: its project's rules decide (projects.go)

	// decided key, guarded by Server.mu; host == "" while still peeking.
	host  string
	proto egressrules.Proto
	port  uint16

	byPolicy atomic.Bool // closed because a policy swap refused it
	reason   string      // why, guarded by Server.mu
}

// SetPolicy swaps the policy in place. Connections accepted from now on are
// decided by p; every live connection is re-decided under p and reset when p
// refuses it. Connections p still allows are not touched. A nil p refuses
// everything, live connections included.
func (s *Server) SetPolicy(p *egressrules.Policy) {
	s.policy.Store(p)
	s.syncRouted()
	var victims []*liveConn
	s.mu.Lock()
	for c := range s.conns {
		if c.host == "" {
			continue // still peeking: decide() will see the new pointer
		}
		if d := decide(p.ForSource(c.src), c.host, c.proto, c.port); !d.Allow {
			c.reason = "policy changed: " + d.Reason
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		s.policyClosed.Add(1)
		c.byPolicy.Store(true)
		s.mu.Lock()
		up := c.upstream
		s.mu.Unlock()
		reset(c.client)
		if up != nil {
			reset(up)
		}
	}
}

// setKey records the (host, proto, port) a connection was decided on, and
// closes the race with a concurrent SetPolicy: the decision d was taken under
// pol; if the current policy is no longer pol, re-decide under the current one
// while holding the registry lock, which SetPolicy takes after its Store.
func (s *Server) setKey(c *liveConn, pol *egressrules.Policy, d egressrules.Decision, host string, proto egressrules.Proto, port uint16) egressrules.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.host, c.proto, c.port = host, proto, port
	if cur := s.policyFor(c); cur != pol && d.Allow {
		d = decide(cur, host, proto, port)
	}
	return d
}

func (s *Server) setUpstream(c *liveConn, up net.Conn) {
	s.mu.Lock()
	c.upstream = up
	s.mu.Unlock()
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	st := Stats{
		Accepted:       s.accepted.Load(),
		Active:         n,
		Allowed:        s.allowed.Load(),
		Denied:         s.denied.Load(),
		Errors:         s.errs.Load(),
		ClosedByPolicy: s.policyClosed.Load(),
		LogDropped:     s.log.dropped.Load(),
		PathDenied:     s.pathDenied.Load(),
		LeavesMinted:   s.leaves.mints.Load(),
	}
	if p := s.policy.Load(); p != nil {
		st.PolicyLoaded = true
		st.PolicyGeneration = p.Generation()
	}
	return st
}

// HealthHandler answers GET /healthz: 200 with the policy generation, the live
// connection count and the dropped log lines when a policy is loaded, else 503.
func (s *Server) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := s.Stats()
		w.Header().Set("Content-Type", "application/json")
		if !st.PolicyLoaded {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":"no policy"}`+"\n")
			return
		}
		json.NewEncoder(w).Encode(map[string]any{
			"policy_generation": st.PolicyGeneration,
			"connections":       st.Active,
			"log_dropped":       st.LogDropped,
		})
	})
	return mux
}

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("egressproxy: server closed")

// Serve accepts connections on ln until ln is closed (returns nil) or the
// server is closed (returns ErrServerClosed).
func (s *Server) Serve(ln net.Listener) error {
	return s.accept(ln, "accept", func(c *liveConn, pol *egressrules.Policy) { go s.handle(c, pol) })
}

// accept is the accept loop of the catch-all and of every routed
// listener: each connection is registered, decided by the policy of its
// client's project current at accept, and handed to start, which must not
// block (it starts the connection's goroutine; s.wg is already counted).
// It returns nil when ln alone was closed and ErrServerClosed when the
// server was (a listener given after Close is closed at once).
func (s *Server) accept(ln net.Listener, what string, start func(*liveConn, *egressrules.Policy)) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{} // Close and Shutdown close it
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of fds and the like: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.cfg.Logf("egressproxy: %s: %v; retrying in %v", what, err, backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.accepted.Add(1)
		c := &liveConn{client: conn, src: sourceAddr(conn)}
		pol := s.policyFor(c)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		start(c, pol)
	}
}

func (s *Server) stopAccepting() {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
}

// Close stops every listener and closes every live connection, then waits for
// the connection goroutines and flushes the access log.
func (s *Server) Close() error {
	s.stopAccepting()
	s.closeAll()
	s.wg.Wait()
	s.log.close()
	return nil
}

// Shutdown stops accepting, lets live connections end on their own until ctx
// is done, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.closeAll()
		<-done
	}
	s.log.close()
	return ctx.Err()
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.client.Close()
		if c.upstream != nil {
			c.upstream.Close()
		}
	}
}

// connLog accumulates the access-log fields of one connection.
type connLog struct {
	start    time.Time
	src      string
	proto    string
	hosts    []string
	verdict  string
	rule     string
	reason   string
	upstream string
	up, down int64
	closedBy string
	requests int
	ech      bool
	// inspected: TLS terminated for path rules. denial, when set, is the
	// refusal OnDenied gets (a plain-HTTP path refusal) instead of the
	// connection-level one.
	inspected bool
	denial    *Denial
}

func (l *connLog) addHost(h string) {
	if len(l.hosts) == 0 || l.hosts[len(l.hosts)-1] != h {
		l.hosts = append(l.hosts, h)
	}
}

// finish ends a connection, the catch-all's or a routed listener's: out of
// the registry, both conns closed, the verdict counted, a refusal
// reported, one access-log line.
func (s *Server) finish(c *liveConn, l *connLog) {
	s.mu.Lock()
	delete(s.conns, c)
	up := c.upstream
	policyReason := c.reason
	s.mu.Unlock()
	c.client.Close()
	if up != nil {
		up.Close()
	}
	if c.byPolicy.Load() {
		l.closedBy = "policy"
		l.reason = policyReason
	}
	switch l.verdict {
	case "allowed":
		s.allowed.Add(1)
	case "denied":
		s.denied.Add(1)
		if s.cfg.OnDenied != nil {
			d := Denial{Time: l.start, Src: l.src, Proto: l.proto, Reason: l.reason}
			if len(l.hosts) > 0 {
				d.Host = l.hosts[len(l.hosts)-1] // the one refused
			}
			if l.denial != nil {
				d = *l.denial
			}
			s.cfg.OnDenied(d)
		}
	default:
		l.verdict = "error"
		s.errs.Add(1)
	}
	s.log.write(l)
}

func (s *Server) handle(c *liveConn, pol *egressrules.Policy) {
	defer s.wg.Done()
	l := &connLog{start: time.Now(), src: c.client.RemoteAddr().String(), proto: "other"}
	defer s.finish(c, l)

	c.client.SetReadDeadline(time.Now().Add(s.cfg.PeekTimeout))
	pk, err := Peek(c.client)
	switch {
	case pk.Kind == KindTLS:
		l.proto = "https"
		s.handleTLS(c, pol, pk, err, l)
	case pk.Kind == KindHTTP:
		l.proto = "http"
		s.handleHTTP(c, pol, pk, l)
	default:
		l.verdict = "denied"
		l.closedBy = "policy"
		if err != nil {
			l.reason = err.Error()
		} else {
			l.reason = "neither TLS nor HTTP/1.x"
		}
		reset(c.client)
	}
}

// TLS alert descriptions (RFC 8446 6.2).
const (
	alertAccessDenied  = 49
	alertInternalError = 80
)

func (s *Server) handleTLS(c *liveConn, pol *egressrules.Policy, pk Peeked, peekErr error, l *connLog) {
	l.ech = pk.ECH
	if pk.SNI != "" {
		l.addHost(pk.SNI)
	}
	if peekErr != nil {
		l.verdict = "denied"
		l.reason = peekErr.Error()
		l.closedBy = "policy"
		sendAlert(c.client, alertAccessDenied)
		return
	}
	d := decide(pol, pk.SNI, egressrules.HTTPS, 443)
	d = s.setKey(c, pol, d, pk.SNI, egressrules.HTTPS, 443)
	l.rule, l.reason = ruleKey(d), d.Reason
	if !d.Allow {
		l.verdict = "denied"
		l.closedBy = "policy"
		sendAlert(c.client, alertAccessDenied)
		return
	}
	if d.Paths != nil {
		s.inspectTLS(c, pk, l)
		return
	}
	up, addr, err := s.dialAllowed(s.policy.Load(), pk.SNI, 443)
	if err != nil {
		l.verdict = "error"
		l.reason = err.Error()
		l.closedBy = "error"
		sendAlert(c.client, alertInternalError)
		return
	}
	s.setUpstream(c, up)
	l.upstream = addr
	l.verdict = "allowed"
	if c.byPolicy.Load() {
		return // a swap refused it while we dialled
	}
	c.client.SetReadDeadline(time.Time{})
	if _, err := up.Write(pk.Bytes); err != nil {
		l.closedBy = "error"
		l.reason = "writing ClientHello upstream: " + err.Error()
		return
	}
	l.up = int64(len(pk.Bytes))
	var upN, downN int64
	upN, downN, l.closedBy = pipe(c.client, up)
	l.up += upN
	l.down = downN
}

func ruleKey(d egressrules.Decision) string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.Key()
}

// dialAllowed resolves host once, keeps the IPv4 answers the policy's
// private/metadata floor accepts, and dials them in order until one connects.
// There is no second lookup, so a rebinding answer cannot slip in between the
// check and the dial.
func (s *Server) dialAllowed(pol *egressrules.Policy, host string, port uint16) (net.Conn, string, error) {
	if pol == nil {
		return nil, "", errors.New("no policy loaded (fail closed)")
	}
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		if s.cfg.Resolver == nil {
			return nil, "", errors.New("no resolver configured")
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
		addrs, err = s.cfg.Resolver.LookupNetIP(ctx, "ip4", host)
		cancel()
		if err != nil {
			return nil, "", fmt.Errorf("resolving %s: %w", host, err)
		}
	}
	var ok []netip.Addr
	var refused []string
	for _, a := range addrs {
		a = a.Unmap()
		if !a.Is4() {
			continue
		}
		if allowed, why := pol.AnswerAllowed(a); !allowed {
			refused = append(refused, why)
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		if len(refused) > 0 {
			return nil, "", fmt.Errorf("resolving %s: every answer refused by the private-destination floor: %v", host, refused)
		}
		return nil, "", fmt.Errorf("resolving %s: no IPv4 answer", host)
	}
	var lastErr error
	for _, a := range ok {
		addr := netip.AddrPortFrom(a, port).String()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
		conn, err := s.cfg.Dial(ctx, "tcp4", addr)
		cancel()
		if err == nil {
			return conn, addr, nil
		}
		lastErr = err
	}
	return nil, "", fmt.Errorf("dialling %s port %s: %w", host, strconv.Itoa(int(port)), lastErr)
}

// closeWriter is implemented by *net.TCPConn (and *net.UnixConn).
type closeWriter interface{ CloseWrite() error }

// pipe copies both directions between the bare conns until both have ended.
// io.Copy between two *net.TCPConn uses splice(2) on Linux; the byte counts
// come from its return values because any counting wrapper would disable
// splice. A clean EOF in one direction is passed on as a half-close so the
// other direction can finish; an error aborts both.
func pipe(client, up net.Conn) (upN, downN int64, closedBy string) {
	type res struct {
		n    int64
		err  error
		toUp bool
	}
	ch := make(chan res, 2)
	go func() { n, err := io.Copy(up, client); ch <- res{n, err, true} }()
	go func() { n, err := io.Copy(client, up); ch <- res{n, err, false} }()
	first := <-ch
	if first.err == nil {
		if first.toUp {
			closedBy = "client"
			halfClose(up)
		} else {
			closedBy = "upstream"
			halfClose(client)
		}
	} else {
		closedBy = "error"
		client.Close()
		up.Close()
	}
	second := <-ch
	if first.toUp {
		upN, downN = first.n, second.n
	} else {
		upN, downN = second.n, first.n
	}
	if second.err == nil {
		if second.toUp {
			halfClose(up)
		} else {
			halfClose(client)
		}
	}
	return upN, downN, closedBy
}

func halfClose(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// reset closes c with an RST instead of a FIN (SO_LINGER 0), so the peer sees
// ECONNRESET rather than a clean end of stream.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// sendAlert writes one fatal TLS alert record and closes gently: half-close,
// then drain briefly, because closing with unread input would make the kernel
// send an RST that can overtake the alert.
func sendAlert(c net.Conn, desc byte) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, desc})
	gentleClose(c)
}

func gentleClose(c net.Conn) {
	halfClose(c)
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	c.Close()
}
