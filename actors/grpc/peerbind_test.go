package grpc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

func TestPeerBinding(t *testing.T) {
	const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	addrs := map[string][]netip.Addr{cid: {netip.MustParseAddr("172.20.0.5")}}
	lookups := 0
	var lookupErr error
	b := newPeerBinding(func(_ context.Context, id string) ([]netip.Addr, error) {
		lookups++
		if lookupErr != nil {
			return nil, lookupErr
		}
		a, ok := addrs[id]
		if !ok {
			return nil, fmt.Errorf("container %.12s: %w", id, dockerx.ErrNoSuchContainer)
		}
		return a, nil
	})
	now := time.Unix(1_800_000_000, 0)
	b.now = func() time.Time { return now }
	ctx := context.Background()
	id := func(peer, container string) identity {
		return identity{AgentIdentity: certs.AgentIdentity{Project: "p", Agent: "a", ContainerID: container}, Peer: peer}
	}
	reason := func(err error) string {
		var r *refusal
		if errors.As(err, &r) {
			return r.reason
		}
		var u *unavailable
		if errors.As(err, &u) {
			return "unavailable"
		}
		return fmt.Sprint(err)
	}

	if err := b.check(ctx, id("172.20.0.5:41000", cid)); err != nil {
		t.Fatalf("from the container's own address: %v", err)
	}
	if err := b.check(ctx, id("[::ffff:172.20.0.5]:41000", cid)); err != nil {
		t.Errorf("from its IPv4-mapped address: %v", err)
	}
	if lookups != 1 {
		t.Errorf("%d lookups for two connections within the cache's life, want 1", lookups)
	}
	err := b.check(ctx, id("172.20.0.6:41000", cid))
	if reason(err) != "peer_address_mismatch" || !strings.Contains(err.Error(), "172.20.0.6") || !strings.Contains(err.Error(), "172.20.0.5") {
		t.Errorf("from another agent's address: %v", err)
	}
	if lookups != 2 {
		t.Errorf("a mismatch is looked up afresh before it is refused: %d lookups, want 2", lookups)
	}
	// The container restarted with another address: the fresh lookup
	// finds it.
	addrs[cid] = []netip.Addr{netip.MustParseAddr("172.20.0.9")}
	if err := b.check(ctx, id("172.20.0.9:41000", cid)); err != nil {
		t.Errorf("after the container's address changed: %v", err)
	}
	if err := b.check(ctx, id("127.0.0.1:41000", "f00d")); err != nil {
		t.Errorf("from loopback (the CP's own namespace): %v", err)
	}
	if r := reason(b.check(ctx, id("172.20.0.7:41000", "feedfacefeedface"))); r != "container_unknown" {
		t.Errorf("a certificate for a container that does not exist: %s", r)
	}
	if r := reason(b.check(ctx, id("not-an-address", cid))); r != "peer_address_unknown" {
		t.Errorf("a peer that is no IP address: %s", r)
	}
	now = now.Add(time.Minute)
	lookupErr = errors.New("daemon unreachable")
	if r := reason(b.check(ctx, id("172.20.0.9:41000", cid))); r != "unavailable" {
		t.Errorf("Docker not answering: %s, want unavailable (a retry, not a refusal)", r)
	}
	var nilBinding *peerBinding
	if err := nilBinding.check(ctx, id("172.20.0.6:41000", cid)); err != nil || newPeerBinding(nil) != nil {
		t.Errorf("no lookup configured: %v", err)
	}
}
