package grpc

import (
	"context"
	"net/netip"
)

// SetLookup replaces FirewallResolveHostname's resolver until the
// returned restore is called.
func SetLookup(f func(ctx context.Context, network, host string) ([]netip.Addr, error)) (restore func()) {
	lf := lookupFunc(f)
	prev := lookupNetIP.Swap(&lf)
	return func() { lookupNetIP.Store(prev) }
}
