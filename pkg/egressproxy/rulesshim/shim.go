// Package egressrules is a TEMPORARY stand-in for pkg/egressrules, which a
// colleague is writing in parallel. It mirrors the agreed API just enough for
// pkg/egressproxy to compile and be tested; delete this directory and switch
// the import once the real package lands.
package egressrules

import (
	"fmt"
	"net/netip"
	"strings"
)

type Proto string

const (
	HTTPS Proto = "https"
	HTTP  Proto = "http"
)

type PortRange struct{ Lo, Hi uint16 }

func Port(p uint16) PortRange { return PortRange{p, p} }

func (p PortRange) Contains(port uint16) bool { return p.Lo <= port && port <= p.Hi }

type Action string

const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

type Rule struct {
	Dst    string
	Proto  Proto
	Port   PortRange
	Action Action
}

func (r Rule) Key() string { return fmt.Sprintf("%s:%s:%d", r.Dst, r.Proto, r.Port.Lo) }

type Entry struct {
	Rule
	ID uint32
}

type Decision struct {
	Allow  bool
	Rule   *Entry
	Reason string
}

type Doc struct {
	Generation          uint64
	Rules               []Entry
	PrivateDestinations []string
}

type Policy struct {
	gen     uint64
	rules   []Entry
	private []netip.Prefix
}

var floor = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("224.0.0.0/3"),
}

func (d Doc) Compile() (*Policy, error) {
	p := &Policy{gen: d.Generation, rules: d.Rules}
	for _, s := range d.PrivateDestinations {
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			a, err2 := netip.ParseAddr(s)
			if err2 != nil {
				return nil, err
			}
			pf = netip.PrefixFrom(a, a.BitLen())
		}
		p.private = append(p.private, pf)
	}
	return p, nil
}

func (p *Policy) Generation() uint64 { return p.gen }

func (p *Policy) Decide(host string, proto Proto, port uint16) Decision {
	var allow *Entry
	for i := range p.rules {
		r := &p.rules[i]
		if r.Proto != proto || !r.Port.Contains(port) {
			continue
		}
		match := r.Dst == host || (strings.HasPrefix(r.Dst, ".") && (host == r.Dst[1:] || strings.HasSuffix(host, r.Dst)))
		if !match {
			continue
		}
		if r.Action == "deny" {
			return Decision{Rule: r, Reason: "denied by rule " + r.Key()}
		}
		if allow == nil {
			allow = r
		}
	}
	if allow != nil {
		return Decision{Allow: true, Rule: allow, Reason: "allowed by rule " + allow.Key()}
	}
	return Decision{Reason: "no rule allows " + host}
}

func (p *Policy) AnswerAllowed(ip netip.Addr) (bool, string) {
	ip = ip.Unmap()
	for _, pf := range p.private {
		if pf.Contains(ip) {
			return true, ""
		}
	}
	for _, pf := range floor {
		if pf.Contains(ip) {
			return false, ip.String() + " is in private range " + pf.String()
		}
	}
	return true, ""
}
