// Package stack holds what the members of the firewall stack (the DNS and
// egress proxy siblings) share: where they answer, and the adoption check
// a control plane that cannot build them yet runs at start-up.
package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Addrs are the stack's fixed addresses on the agent network: the last
// octet of the gateway replaced by 200 (proxy) and 201 (DNS).
type Addrs struct {
	Subnet  netip.Prefix
	Gateway netip.Addr
	Proxy   netip.AddrPort // catch-all listener
	DNS     netip.AddrPort
}

// Fixed host octets of the stack on the agent network.
const (
	ProxyOctet = 200
	DNSOctet   = 201
)

// AddrsFor derives the stack's addresses from the network's subnet and
// gateway.
func AddrsFor(subnet netip.Prefix, gw netip.Addr, proxyPort uint16) (Addrs, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || !gw.Is4() || !subnet.Contains(gw) {
		return Addrs{}, fmt.Errorf("network subnet %s with gateway %s: want an IPv4 subnet holding its gateway", subnet, gw)
	}
	at := func(octet byte) (netip.Addr, error) {
		b := gw.As4()
		b[3] = octet
		a := netip.AddrFrom4(b)
		if !subnet.Contains(a) {
			return a, fmt.Errorf("network subnet %s cannot hold the firewall stack address %s; give the network a /24 or larger", subnet, a)
		}
		return a, nil
	}
	proxy, err := at(ProxyOctet)
	if err != nil {
		return Addrs{}, err
	}
	dns, err := at(DNSOctet)
	if err != nil {
		return Addrs{}, err
	}
	return Addrs{Subnet: subnet, Gateway: gw, Proxy: netip.AddrPortFrom(proxy, proxyPort), DNS: netip.AddrPortFrom(dns, 53)}, nil
}

// Member describes one member for its actor. A zero Member checks nothing
// (firewall disabled).
type Member struct {
	// Managed, when set, makes the control plane run the member itself;
	// nil adopts whatever answers at Addr (a stack run by hand, tests).
	Managed *Managed

	Name string         // "dns" or "proxy", for messages
	Addr netip.AddrPort // where it must answer (TCP)
	// Wait bounds the adoption check: the stack may still be starting.
	Wait time.Duration
	// Dial checks one address; nil means a TCP connect.
	Dial func(ctx context.Context, addr string) error
}

// Adopted is what Adopt sends the member's actor when its check ends.
type Adopted struct{ Err error }

// Adopt checks, off the mailbox, that something answers at the member's
// address, retrying until Wait runs out, and sends the outcome to the
// actor as *Adopted.
func Adopt(ctx actor.Context, m Member) {
	self, sys := ctx.Self(), ctx.ActorSystem()
	if !m.Addr.IsValid() {
		sys.Root.Send(self, &Adopted{})
		return
	}
	dial := m.Dial
	if dial == nil {
		dial = func(ctx context.Context, addr string) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			return c.Close()
		}
	}
	go func() {
		deadline := time.Now().Add(m.Wait)
		var err error
		for {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err = dial(cctx, m.Addr.String())
			cancel()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			err = fmt.Errorf("firewall.enable is true but no %s answers at %s (%v), and this control plane cannot start the firewall stack's "+
				"containers itself yet; start a %s there, or set firewall.enable: false in settings.yaml to run without egress enforcement",
				m.Name, m.Addr, err, m.Name)
		}
		sys.Root.Send(self, &Adopted{Err: err})
	}()
}

// Check dials a member once (for the /healthz probe).
func Check(ctx context.Context, m Member) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", m.Addr.String())
	if err != nil {
		return fmt.Errorf("no %s answers at %s: %w", m.Name, m.Addr, err)
	}
	return c.Close()
}
