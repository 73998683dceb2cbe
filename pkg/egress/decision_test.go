package egress

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const nobody = 65534

// The stand-ins. Every address is on loopback; the "outside" originals are
// loopback addresses nothing listens on, so a packet that is not rewritten
// reaches nobody. The programs' loopback exemption is switched off
// (EnforceLoopback) except in the loopback row.
const (
	unknownDst   = "127.0.0.9:443"  // unknown TCP destination
	routedIP     = "127.0.0.10"     // has identity 7
	dnsOrigIP    = "127.0.0.12"     // "some resolver"
	udpOtherDst  = "127.0.0.9:9999" // UDP, no route
	subnetPrefix = "127.0.0.16/28"
	subnetPeerIP = "127.0.0.17" // an agent of our project
	otherPeerIP  = "127.0.0.18" // an agent of another project
	selfIP       = "127.0.0.19" // the agent itself
	cpIP         = "127.0.0.20"
	gatewayIP    = "127.0.0.30"
	networkIP    = "127.0.0.16"
	broadcastIP  = "127.0.0.31"
	identity     = 7
	ourProject   = 11
	otherProject = 12
)

type world struct {
	proxy, route, peer, gateway, loop *recorder // TCP
	otherPeer, self                   *recorder // TCP
	cpAgent, cpHydra, cpOther         *recorder // TCP on the CP's address
	loop6                             *recorder // TCP on [::1], nil without IPv6
	routeUDP                          *recorder
	dnsTCP, dnsUDP                    *recorder
	cfg                               Config
	routes                            []Route
}

func newWorld(t *testing.T) *world {
	w := &world{
		proxy:     newTCPRecorder(t, "127.0.0.2:0"),
		route:     newTCPRecorder(t, "127.0.0.2:0"),
		routeUDP:  newUDPRecorder(t, "127.0.0.2:0"),
		peer:      newTCPRecorder(t, subnetPeerIP+":0"),
		gateway:   newTCPRecorder(t, gatewayIP+":0"),
		loop:      newTCPRecorder(t, "127.0.0.1:0"),
		otherPeer: newTCPRecorder(t, otherPeerIP+":0"),
		self:      newTCPRecorder(t, selfIP+":0"),
		cpAgent:   newTCPRecorder(t, cpIP+":0"),
		cpHydra:   newTCPRecorder(t, cpIP+":0"),
		cpOther:   newTCPRecorder(t, cpIP+":0"),
	}
	w.dnsTCP, w.dnsUDP = newDualRecorder(t, "127.0.0.3")
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		w.loop6 = newTCPRecorder(t, "[::1]:0")
	}
	w.cfg = Config{
		Proxy:           w.proxy.Addr,
		DNS:             w.dnsTCP.Addr,
		Subnet:          netip.MustParsePrefix(subnetPrefix),
		Gateway:         netip.MustParseAddr(gatewayIP),
		CP:              netip.MustParseAddr(cpIP),
		CPPorts:         [2]uint16{w.cpAgent.Addr.Port(), w.cpHydra.Addr.Port()},
		Self:            netip.MustParseAddr(selfIP),
		ProjectID:       ourProject,
		EnforceLoopback: true,
	}
	w.routes = []Route{
		{Identity: identity, Port: 8443, Proto: TCP, ListenerPort: w.route.Addr.Port()},
		{Identity: identity, Port: 5000, Proto: UDP, ListenerPort: w.routeUDP.Addr.Port()},
	}
	return w
}

// setup attaches a fresh Manager to a fresh cgroup and installs the world.
func (w *world) setup(t *testing.T) (*Manager, string, uint64) {
	cg, cgid := newCgroup(t, "")
	m := openManager(t, newPinDir(t))
	if err := m.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	if err := m.SetIdentity(netip.MustParseAddr(routedIP), identity); err != nil {
		t.Fatal(err)
	}
	if err := m.SyncRoutes(w.routes); err != nil {
		t.Fatal(err)
	}
	must(t, m.SetPeer(netip.MustParseAddr(subnetPeerIP), ourProject))
	must(t, m.SetPeer(netip.MustParseAddr(otherPeerIP), otherProject))
	return m, cg, cgid
}

type outcome struct {
	errno int       // wanted errno of the operation (0: success)
	at    *recorder // the listener the token must reach (nil: none of ours)
	peer  string    // wanted getpeername / reply source
	reply bool      // a DNS reply must come back
}

type row struct {
	name     string
	op       helperOp
	loopback bool         // run with the loopback exemption on
	a2a      AgentToAgent // Config.AgentToAgent for this row ("": deny)
	// enforcedOnly skips the open columns: the packet would leave the
	// loopback world (multicast).
	enforcedOnly bool
	enforced     outcome
	open         outcome // bypassed, disabled, not enrolled
	skip         string
}

func (w *world) rows() []row {
	ap := func(r *recorder) string { return r.Addr.String() }
	mapped := func(s string) string {
		a := netip.MustParseAddrPort(s)
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr().As16()), a.Port()).String()
	}
	proxyMapped := mapped(ap(w.proxy))
	rows := []row{
		{name: "loopback", loopback: true,
			op:       helperOp{Op: "tcp", Addr: ap(w.loop), UID: nobody},
			enforced: outcome{at: w.loop, peer: ap(w.loop)},
			open:     outcome{at: w.loop, peer: ap(w.loop)}},
		{name: "peer, agent_to_agent deny",
			op:       helperOp{Op: "tcp", Addr: ap(w.peer), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{at: w.peer, peer: ap(w.peer)}},
		{name: "peer UDP, agent_to_agent deny",
			op:       helperOp{Op: "udp-sendto", Addr: subnetPeerIP + ":9999", UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{}},
		{name: "peer IPv4-mapped, agent_to_agent deny",
			op:       helperOp{Op: "tcp", Addr: mapped(ap(w.peer)), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{at: w.peer, peer: mapped(ap(w.peer))}},
		{name: "peer of the project, agent_to_agent project", a2a: AgentToAgentProject,
			op:       helperOp{Op: "tcp", Addr: ap(w.peer), UID: nobody},
			enforced: outcome{at: w.peer, peer: ap(w.peer)},
			open:     outcome{at: w.peer, peer: ap(w.peer)}},
		{name: "peer of another project, agent_to_agent project", a2a: AgentToAgentProject,
			op:       helperOp{Op: "tcp", Addr: ap(w.otherPeer), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{at: w.otherPeer, peer: ap(w.otherPeer)}},
		{name: "peer of another project, agent_to_agent allow", a2a: AgentToAgentAllow,
			op:       helperOp{Op: "tcp", Addr: ap(w.otherPeer), UID: nobody},
			enforced: outcome{at: w.otherPeer, peer: ap(w.otherPeer)},
			open:     outcome{at: w.otherPeer, peer: ap(w.otherPeer)}},
		{name: "self",
			op:       helperOp{Op: "tcp", Addr: ap(w.self), UID: nobody},
			enforced: outcome{at: w.self, peer: ap(w.self)},
			open:     outcome{at: w.self, peer: ap(w.self)}},
		// TCP to the gateway (the host) goes to the proxy like any outside
		// address; anything else to it is refused.
		{name: "gateway TCP",
			op:       helperOp{Op: "tcp", Addr: ap(w.gateway), UID: nobody},
			enforced: outcome{at: w.proxy, peer: ap(w.proxy)},
			open:     outcome{at: w.gateway, peer: ap(w.gateway)}},
		{name: "gateway TCP, agent_to_agent allow", a2a: AgentToAgentAllow,
			op:       helperOp{Op: "tcp", Addr: ap(w.gateway), UID: nobody},
			enforced: outcome{at: w.proxy, peer: ap(w.proxy)},
			open:     outcome{at: w.gateway, peer: ap(w.gateway)}},
		{name: "gateway UDP, agent_to_agent allow", a2a: AgentToAgentAllow,
			op:       helperOp{Op: "udp-sendto", Addr: gatewayIP + ":9999", UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{}},
		{name: "CP agent port",
			op:       helperOp{Op: "tcp", Addr: ap(w.cpAgent), UID: nobody},
			enforced: outcome{at: w.cpAgent, peer: ap(w.cpAgent)},
			open:     outcome{at: w.cpAgent, peer: ap(w.cpAgent)}},
		{name: "CP Hydra public port IPv4-mapped",
			op:       helperOp{Op: "tcp", Addr: mapped(ap(w.cpHydra)), UID: nobody},
			enforced: outcome{at: w.cpHydra, peer: mapped(ap(w.cpHydra))},
			open:     outcome{at: w.cpHydra, peer: mapped(ap(w.cpHydra))}},
		{name: "CP other port", a2a: AgentToAgentAllow,
			op:       helperOp{Op: "tcp", Addr: ap(w.cpOther), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{at: w.cpOther, peer: ap(w.cpOther)}},
		{name: "CP other port IPv4-mapped",
			op:       helperOp{Op: "tcp", Addr: mapped(ap(w.cpOther)), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{at: w.cpOther, peer: mapped(ap(w.cpOther))}},
		{name: "subnet network address", a2a: AgentToAgentAllow,
			op:       helperOp{Op: "udp-sendto", Addr: networkIP + ":9999", UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{errno: -1}},
		{name: "subnet broadcast", a2a: AgentToAgentAllow,
			op:       helperOp{Op: "udp-sendto", Addr: broadcastIP + ":9999", UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{errno: -1}},
		{name: "limited broadcast",
			op:       helperOp{Op: "udp-sendto", Addr: "255.255.255.255:9999", UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{errno: -1}}, // EACCES without SO_BROADCAST
		{name: "limited broadcast IPv4-mapped",
			op:       helperOp{Op: "udp-sendto", Addr: mapped("255.255.255.255:9999"), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{errno: -1}},
		{name: "subnet broadcast IPv4-mapped", a2a: AgentToAgentAllow,
			op:       helperOp{Op: "udp-sendto", Addr: mapped(broadcastIP + ":9999"), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{errno: -1}},
		{name: "multicast", enforcedOnly: true,
			op:       helperOp{Op: "udp-sendto", Addr: "224.0.0.251:5353", UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)}},
		{name: "multicast IPv4-mapped", enforcedOnly: true,
			op:       helperOp{Op: "udp-sendto", Addr: mapped("239.1.2.3:5000"), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)}},
		{name: "DNS UDP sendto",
			op:       helperOp{Op: "udp-sendto", Addr: dnsOrigIP + ":53", Reply: true, UID: nobody},
			enforced: outcome{at: w.dnsUDP, peer: dnsOrigIP + ":53", reply: true},
			open:     outcome{errno: -1}},
		{name: "DNS UDP connected",
			op:       helperOp{Op: "udp-connect", Addr: dnsOrigIP + ":53", Reply: true, UID: nobody},
			enforced: outcome{at: w.dnsUDP, peer: dnsOrigIP + ":53", reply: true},
			open:     outcome{errno: -1}},
		{name: "DNS TCP",
			op:       helperOp{Op: "tcp", Addr: dnsOrigIP + ":53", UID: nobody},
			enforced: outcome{at: w.dnsTCP, peer: ap(w.dnsTCP)},
			open:     outcome{errno: int(unix.ECONNREFUSED)}},
		{name: "DNS UDP IPv4-mapped",
			op:       helperOp{Op: "udp-sendto", Addr: mapped(dnsOrigIP + ":53"), Reply: true, UID: nobody},
			enforced: outcome{at: w.dnsUDP, peer: mapped(dnsOrigIP + ":53"), reply: true},
			open:     outcome{errno: -1}},
		{name: "routed TCP",
			op:       helperOp{Op: "tcp", Addr: routedIP + ":8443", UID: nobody},
			enforced: outcome{at: w.route, peer: ap(w.route)},
			open:     outcome{errno: int(unix.ECONNREFUSED)}},
		{name: "routed UDP",
			op:       helperOp{Op: "udp-sendto", Addr: routedIP + ":5000", Reply: true, UID: nobody},
			enforced: outcome{at: w.routeUDP, peer: ap(w.routeUDP), reply: true},
			open:     outcome{errno: -1}},
		{name: "unknown TCP",
			op:       helperOp{Op: "tcp", Addr: unknownDst, UID: nobody},
			enforced: outcome{at: w.proxy, peer: ap(w.proxy)},
			open:     outcome{errno: int(unix.ECONNREFUSED)}},
		{name: "UDP non-DNS",
			op:       helperOp{Op: "udp-sendto", Addr: udpOtherDst, UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{}},
		{name: "UDP non-DNS connected",
			op:       helperOp{Op: "udp-connect", Addr: udpOtherDst, UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{}},
		{name: "raw socket (root)",
			op:       helperOp{Op: "raw", UID: 0},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{}},
		{name: "IPv4-mapped IPv6 TCP",
			op:       helperOp{Op: "tcp", Addr: mapped(unknownDst), UID: nobody},
			enforced: outcome{at: w.proxy, peer: proxyMapped},
			open:     outcome{errno: int(unix.ECONNREFUSED)}},
		{name: "root uid",
			op:       helperOp{Op: "tcp", Addr: unknownDst, UID: 0},
			enforced: outcome{at: w.proxy, peer: ap(w.proxy)},
			open:     outcome{errno: int(unix.ECONNREFUSED)}},
	}
	v6 := row{name: "native IPv6", skip: "no IPv6 on loopback"}
	if w.loop6 != nil {
		v6 = row{name: "native IPv6",
			op:       helperOp{Op: "tcp", Addr: ap(w.loop6), UID: nobody},
			enforced: outcome{errno: int(unix.EPERM)},
			open:     outcome{at: w.loop6, peer: ap(w.loop6)}}
	}
	rows = append(rows, v6)
	return rows
}

type column struct {
	name     string
	enforced bool
	apply    func(t *testing.T, m *Manager, cgid uint64)
}

var columns = []column{
	{"enrolled", true, func(*testing.T, *Manager, uint64) {}},
	{"bypassed", false, func(t *testing.T, m *Manager, cgid uint64) {
		must(t, m.Bypass(cgid, time.Now().Add(time.Minute)))
	}},
	{"bypass expired", true, func(t *testing.T, m *Manager, cgid uint64) {
		must(t, m.Bypass(cgid, time.Now().Add(150*time.Millisecond)))
		time.Sleep(200 * time.Millisecond)
	}},
	{"disabled", false, func(t *testing.T, m *Manager, cgid uint64) {
		must(t, m.Disable(cgid))
	}},
	{"not enrolled", false, func(t *testing.T, m *Manager, cgid uint64) {
		must(t, m.Unenroll(cgid))
	}},
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedDecisionTable runs every row of the decision table in every
// enrollment state, each cell a real socket operation from a process inside
// a fresh child cgroup.
func TestPrivilegedDecisionTable(t *testing.T) {
	requirePrivileged(t)
	w := newWorld(t)
	m, cg, cgid := w.setup(t)

	for _, col := range columns {
		for _, r := range w.rows() {
			t.Run(col.name+"/"+r.name, func(t *testing.T) {
				if r.skip != "" {
					t.Skip(r.skip)
				}
				if r.enforcedOnly && !col.enforced {
					t.Skip("would leave the loopback world unenforced")
				}
				cfg := w.cfg
				cfg.EnforceLoopback = !r.loopback
				cfg.AgentToAgent = r.a2a
				must(t, m.Enroll(cgid, cfg))
				col.apply(t, m, cgid)

				op := r.op
				op.Cgroup = cg
				op.Token = fmt.Sprintf("%s/%s/%s", col.name, r.name, randomSuffix(t))
				res := runInCgroup(t, op)
				want := r.open
				if col.enforced {
					want = r.enforced
				}
				check(t, w, op, res, want)
			})
		}
	}
}

func check(t *testing.T, w *world, op helperOp, res helperResult, want outcome) {
	t.Helper()
	t.Logf("%s %s uid %d: %s peer=%s from=%s reply=%q", op.Op, op.Addr, op.UID, errnoName(res.Errno), res.Peer, res.From, res.Reply)
	all := []*recorder{w.proxy, w.route, w.routeUDP, w.peer, w.gateway, w.loop, w.dnsTCP, w.dnsUDP,
		w.otherPeer, w.self, w.cpAgent, w.cpHydra, w.cpOther}
	if w.loop6 != nil {
		all = append(all, w.loop6)
	}
	switch {
	case want.errno == -1: // any failure: UDP to a port nobody listens on
		if res.Errno == 0 && res.Reply != "" {
			t.Errorf("got reply %q from %s, want none", res.Reply, res.From)
		}
	case res.Errno != want.errno:
		t.Fatalf("got %s (%s), want %s", errnoName(res.Errno), res.Err, errnoName(want.errno))
	}
	if want.at != nil {
		rec, ok := want.at.wait(op.Token, 2*time.Second)
		if !ok {
			t.Fatalf("token did not reach %v", want.at.Addr)
		}
		_ = rec
		if want.reply {
			if res.Reply != "dns:"+op.Token {
				t.Errorf("reply %q, want %q", res.Reply, "dns:"+op.Token)
			}
			if res.From != want.peer {
				t.Errorf("reply came from %s, want %s", res.From, want.peer)
			}
		} else if want.peer != "" && res.Peer != want.peer {
			t.Errorf("getpeername %s, want %s", res.Peer, want.peer)
		}
	}
	// Nothing else of ours saw the token.
	time.Sleep(5 * time.Millisecond)
	for _, r := range all {
		if r != want.at && r.has(op.Token) {
			t.Errorf("token reached %v too", r.Addr)
		}
	}
}
