package grpc

import (
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestRegisterLimiterBounded: the per-peer map never holds more than
// RegisterPeers; peers whose bucket refilled go first, so a peer still
// being limited keeps its empty bucket while others come and go.
func TestRegisterLimiterBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	r := newRegisterLimiter(Limits{RegisterRate: 1, RegisterBurst: 2, RegisterPeers: 4}, zap.NewNop())
	r.now = func() time.Time { return now }
	limited := netip.MustParseAddr("192.0.2.1")
	for range 2 {
		if ok, _, _ := r.allow(limited); !ok {
			t.Fatal("the burst was refused")
		}
	}
	if ok, wait, _ := r.allow(limited); ok || wait <= 0 {
		t.Fatalf("the third call: ok=%v wait=%s, want refused with a wait", ok, wait)
	}
	for i := range 50 {
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)})
		if ok, _, _ := r.allow(ip); !ok {
			t.Fatalf("first call of %s refused", ip)
		}
		now = now.Add(10 * time.Millisecond)
		if n := r.tracked(); n > 4 {
			t.Fatalf("%d peers tracked, bound 4", n)
		}
	}
	// 0.5 s later the limited peer has half a token, not a whole one: it
	// was kept (a forgotten peer would get a fresh burst).
	if ok, _, _ := r.allow(limited); ok {
		t.Error("the limited peer was forgotten and got a fresh burst")
	}
	now = now.Add(2 * time.Second)
	if ok, _, _ := r.allow(limited); !ok {
		t.Error("the limited peer is still refused after its bucket refilled")
	}
}
