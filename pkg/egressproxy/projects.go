package egressproxy

import (
	"net"
	"net/netip"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// policyFor is the current policy's view for c's client: the global rules
// and those of the project the control plane gave its address (the policy
// doc's agents). Views are cached in the policy, so the pointer is stable
// for one policy and one project (setKey compares it).
func (s *Server) policyFor(c *liveConn) *egressrules.Policy {
	return s.policy.Load().ForSource(c.src)
}

// sourceAddr is the connection's client address, unmapped; the zero Addr
// (the global rules) when it has none.
func sourceAddr(conn net.Conn) netip.Addr {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
