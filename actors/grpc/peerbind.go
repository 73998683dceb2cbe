package grpc

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// ContainerAddrs tells the addresses a container has on its networks
// (dockerx.ContainerAddrs: a Docker inspect); dockerx.ErrNoSuchContainer
// for one the daemon does not know.
type ContainerAddrs func(ctx context.Context, containerID string) ([]netip.Addr, error)

// peerBinding binds an agent's identity to where it connects from: a
// Register or Session is answered only when the connection comes from an
// address of the container its certificate names. A certificate and key
// copied out of one agent are then of no use from anywhere else, another
// agent included.
//
// A peer on loopback is exempt: in the CP's container that is the CP's
// own network namespace, which no agent container shares; a CP run on the
// host (development, the tests' simulated agents) trusts the host's own
// processes, which are outside what the firewall confines anyway.
//
// The addresses are cached per container for a short while (a Register
// and the Session after it ask once); a mismatch is looked up afresh
// before it is refused, in case the container was restarted with another
// address.
type peerBinding struct {
	lookup ContainerAddrs
	ttl    time.Duration
	now    func() time.Time

	mu    sync.Mutex
	cache map[string]cachedAddrs
}

type cachedAddrs struct {
	addrs []netip.Addr
	at    time.Time
}

// peerCacheMax bounds the cache; past it the cache starts again empty.
const peerCacheMax = 4096

func newPeerBinding(lookup ContainerAddrs) *peerBinding {
	if lookup == nil {
		return nil
	}
	return &peerBinding{lookup: lookup, ttl: 10 * time.Second, now: time.Now, cache: map[string]cachedAddrs{}}
}

// unavailable answers Unavailable with its message (the caller retries).
type unavailable struct{ msg string }

func (u *unavailable) Error() string { return u.msg }

// check returns nil when id may be served on this connection, a *refusal
// when it may not, or an *unavailable when Docker could not tell.
func (b *peerBinding) check(ctx context.Context, id identity) error {
	if b == nil {
		return nil
	}
	ap, err := netip.ParseAddrPort(id.Peer)
	if err != nil {
		return refuse("peer_address_unknown", "the connection's peer address %q is not an IP address", id.Peer)
	}
	peer := ap.Addr().Unmap()
	if peer.IsLoopback() {
		return nil
	}
	addrs, err := b.addrs(ctx, id.ContainerID, false)
	if err == nil && !slices.Contains(addrs, peer) {
		addrs, err = b.addrs(ctx, id.ContainerID, true)
	}
	switch {
	case errors.Is(err, dockerx.ErrNoSuchContainer):
		return refuse("container_unknown", "the certificate names container %.12s, which does not exist on this host", id.ContainerID)
	case err != nil:
		return &unavailable{msg: "cannot tell the addresses of the certificate's container now, retry"}
	case !slices.Contains(addrs, peer):
		return refuse("peer_address_mismatch", "the certificate names container %.12s, whose addresses are %v; this connection comes from %s",
			id.ContainerID, addrs, peer)
	}
	return nil
}

func (b *peerBinding) addrs(ctx context.Context, containerID string, fresh bool) ([]netip.Addr, error) {
	b.mu.Lock()
	c, ok := b.cache[containerID]
	b.mu.Unlock()
	if ok && !fresh && b.now().Sub(c.at) < b.ttl {
		return c.addrs, nil
	}
	addrs, err := b.lookup(ctx, containerID)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if len(b.cache) >= peerCacheMax {
		b.cache = map[string]cachedAddrs{}
	}
	b.cache[containerID] = cachedAddrs{addrs: addrs, at: b.now()}
	b.mu.Unlock()
	return addrs, nil
}
