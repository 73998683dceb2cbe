package egressproxy

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Routed listeners. The kernel sends an agent's connect to (address whose
// identity is a routed rule's, port) to one dedicated listener per (rule,
// port) (egressrules.Policy.Routes, which the control plane computes the
// kernel's routes with too). The listener a connection arrives on is what
// tells the proxy the agent's port, and for tcp and ssh the host: raw TCP
// carries no name, so such a listener dials its rule's exact name. An https
// listener on another port than 443 peeks the ClientHello and decides its
// SNI on that port, like the catch-all does on 443. Either way the
// connection is decided under the current policy's view for its client's
// project (a more specific deny still wins; a rule of another project does
// not allow it) and re-decided on every policy swap; the upstream is
// resolved through the DNS sibling with the private-range floor, and the two
// bare TCP conns are spliced.

// routedSet is the server's dedicated listeners; the zero value is off.
type routedSet struct {
	mu      sync.Mutex
	enabled bool
	host    string   // bind host, "" for every address
	avoid   []uint16 // the catch-all's and the health listener's ports
	open    map[uint16]*routedListener
}

// routedListener is one open dedicated listener. Its target may change
// under it (same port, another rule after a store edit) without a reopen.
type routedListener struct {
	ln     net.Listener
	target atomic.Pointer[egressrules.RouteListener]
}

// ListenRoutesBeside turns the dedicated listeners on: from the next
// SetPolicy on, the server listens on the catch-all's host at every
// listener port of the policy's routes and closes those a new policy no
// longer has (their connections stay until the policy refuses them). The
// catch-all's and the health listener's ports (host:port each) are never
// used for a route.
func (s *Server) ListenRoutesBeside(catchAll, health string) error {
	host, cport, err := splitPort(catchAll)
	if err != nil {
		return fmt.Errorf("catch-all address %q: %w", catchAll, err)
	}
	_, hport, err := splitPort(health)
	if err != nil {
		return fmt.Errorf("health address %q: %w", health, err)
	}
	r := &s.routed
	r.mu.Lock()
	r.enabled, r.host, r.avoid = true, host, []uint16{cport, hport}
	r.mu.Unlock()
	s.syncRouted()
	return nil
}

func splitPort(hostport string) (string, uint16, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return host, uint16(n), nil
}

// RouteListeners lists the dedicated listeners open now, by port.
func (s *Server) RouteListeners() map[uint16]egressrules.RouteListener {
	r := &s.routed
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[uint16]egressrules.RouteListener, len(r.open))
	for port, l := range r.open {
		out[port] = *l.target.Load()
	}
	return out
}

// syncRouted opens and closes the dedicated listeners to match the current
// policy's routes (read under the lock, so of two racing swaps the later
// one's routes stay). A port that cannot be bound is logged and skipped:
// the kernel's route to it then meets a refused connect (fail closed).
func (s *Server) syncRouted() {
	r := &s.routed
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.enabled {
		return
	}
	p := s.policy.Load()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	routes := p.Routes(r.avoid...)
	if routes.Unrouted != nil {
		s.cfg.Logf("egressproxy: routes: %v", routes.Unrouted)
	}
	want := make(map[uint16]egressrules.RouteListener, len(routes.Listeners))
	for _, l := range routes.Listeners {
		want[l.Listen] = l
	}
	if r.open == nil {
		r.open = map[uint16]*routedListener{}
	}
	for port, l := range r.open {
		if _, keep := want[port]; !keep {
			l.ln.Close()
			delete(r.open, port)
		}
	}
	for port, t := range want {
		t := t
		if l, ok := r.open[port]; ok {
			l.target.Store(&t)
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(r.host, strconv.Itoa(int(port))))
		if err != nil {
			s.cfg.Logf("egressproxy: route listener for %s port %d: %v", t.Rule.Key(), t.Port, err)
			continue
		}
		l := &routedListener{ln: ln}
		l.target.Store(&t)
		r.open[port] = l
		go s.serveRouted(l)
	}
}

// serveRouted accepts on one dedicated listener until it is closed.
func (s *Server) serveRouted(rl *routedListener) {
	// The kernel routes (identity, port) here for every project: the
	// client's project's rules decide, as on the catch-all; the target is
	// the one current at accept.
	_ = s.accept(rl.ln, "route accept", func(c *liveConn, pol *egressrules.Policy) {
		go s.handleRouted(c, pol, *rl.target.Load())
	})
}

func (s *Server) handleRouted(c *liveConn, pol *egressrules.Policy, t egressrules.RouteListener) {
	defer s.wg.Done()
	l := &connLog{start: time.Now(), src: c.client.RemoteAddr().String(), proto: string(t.Rule.Proto)}
	defer s.finish(c, l)

	host := t.PinnedHost()
	var hello []byte
	if host == "" {
		c.client.SetReadDeadline(time.Now().Add(s.cfg.PeekTimeout))
		pk, err := Peek(c.client)
		if pk.SNI != "" {
			l.addHost(pk.SNI)
		}
		if err != nil || pk.Kind != KindTLS || pk.SNI == "" {
			l.verdict, l.closedBy = "denied", "policy"
			l.reason = "no TLS ClientHello with a server name on the https listener for port " + strconv.Itoa(int(t.Port))
			if err != nil {
				l.reason += ": " + err.Error()
			}
			reset(c.client)
			return
		}
		c.client.SetReadDeadline(time.Time{})
		host, hello = pk.SNI, pk.Bytes
		l.ech = pk.ECH
	} else {
		l.addHost(host)
	}
	d := decide(pol, host, t.Rule.Proto, t.Port)
	d = s.setKey(c, pol, d, host, t.Rule.Proto, t.Port)
	l.rule, l.reason = ruleKey(d), d.Reason
	if d.Allow && d.Paths != nil {
		// Inspection runs on the catch-all's port 443 only: passing this
		// through would skip the rule's path rules (fail closed instead).
		d = egressrules.Decision{Rule: d.Rule, Reason: "the path rules of " + ruleKey(d) +
			" are enforced on port 443 only; on port " + strconv.Itoa(int(t.Port)) + " such a name is refused"}
		l.reason = d.Reason
	}
	if !d.Allow {
		l.verdict, l.closedBy = "denied", "policy"
		if hello != nil {
			sendAlert(c.client, alertAccessDenied)
		} else {
			reset(c.client)
		}
		return
	}
	up, addr, err := s.dialAllowed(s.policy.Load(), host, t.Port)
	if err != nil {
		l.verdict, l.closedBy, l.reason = "error", "error", err.Error()
		reset(c.client)
		return
	}
	s.setUpstream(c, up)
	l.upstream = addr
	l.verdict = "allowed"
	if c.byPolicy.Load() {
		return // a swap refused it while we dialled
	}
	if hello != nil {
		if _, err := up.Write(hello); err != nil {
			l.closedBy, l.reason = "error", "writing ClientHello upstream: "+err.Error()
			return
		}
		l.up = int64(len(hello))
	}
	upN, downN, closedBy := pipe(c.client, up)
	l.up += upN
	l.down, l.closedBy = downN, closedBy
}
