package dns

import (
	"net/netip"
	"testing"
)

// A removed rule's id leaves every address at once: the address shared
// with a live rule takes that rule's id, one with no live rule is deleted.
func TestForgetRulesRewritesTheAddressesOfRemovedRules(t *testing.T) {
	r := newRig(t, nil)
	shared, only := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8")
	if err := r.report(t, ans("git.example.com", shared.String(), 3600, 2, 5)); err != nil {
		t.Fatal(err)
	}
	if err := r.report(t, ans("gone.example.com", only.String(), 3600, 3)); err != nil {
		t.Fatal(err)
	}
	if k, _ := r.fake.snapshot(); k[shared] != 2 || k[only] != 3 {
		t.Fatalf("kernel %v", k)
	}
	r.sys.Root.Send(r.dns, &ForgetRules{Live: map[uint32]bool{5: true, 9: true}})
	waitKernel(t, r, func(k map[netip.Addr]uint32) bool {
		_, still := k[only]
		return k[shared] == 5 && !still
	}, "rule 2's address rewritten to 5 and rule 3's forgotten")
	res, _ := r.sys.Root.RequestFuture(r.dns, &GetIdentities{}, 5e9).Result()
	if e := res.(*Identities).Entries; len(e) != 1 || len(e[shared].Rules) != 1 {
		t.Errorf("table %+v, want only %s with rule 5", e, shared)
	}
}

// A report that still names a removed rule (the sibling answered by the
// policy before) does not bring its id back; an id above every live one
// (a rule added since) is kept.
func TestReportsDoNotReviveRemovedRules(t *testing.T) {
	r := newRig(t, nil)
	ip := netip.MustParseAddr("203.0.113.9")
	r.sys.Root.Send(r.dns, &ForgetRules{Live: map[uint32]bool{5: true}})
	if err := r.report(t, ans("git.example.com", ip.String(), 3600, 2, 5)); err != nil {
		t.Fatal(err)
	}
	if k, _ := r.fake.snapshot(); k[ip] != 5 {
		t.Fatalf("kernel %v, want %s -> 5 (rule 2 was removed)", k, ip)
	}
	if err := r.report(t, ans("new.example.com", ip.String(), 3600, 4, 11)); err != nil {
		t.Fatal(err)
	}
	res, _ := r.sys.Root.RequestFuture(r.dns, &GetIdentities{}, 5e9).Result()
	got := res.(*Identities).Entries[ip].Rules
	if _, ok := got[11]; !ok || len(got) != 2 {
		t.Errorf("rules %v, want 5 and 11 (4 removed, 11 added since)", got)
	}
}
