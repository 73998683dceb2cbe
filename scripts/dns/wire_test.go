package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/scripts/dns/clawkerfw"
)

func TestReportedCoversOnlyWhatTheCPStillHolds(t *testing.T) {
	r := &reported{entries: map[netip.Addr]reportedEntry{}}
	ip := netip.MustParseAddr("203.0.113.7")
	now := time.Unix(1000, 0)
	a := []clawkerfw.Answer{{Name: "example.com", IP: ip, RuleIDs: []uint32{3}, TTL: 30}}
	if r.covers(a, now) {
		t.Fatal("an address never reported is covered")
	}
	r.remember(a, now) // the CP holds it until now+30s+30s
	if !r.covers(a, now.Add(10*time.Second)) {
		t.Fatal("a repeat 10s later (entry held until +60s, answer used until +40s) is not covered")
	}
	if r.covers(a, now.Add(25*time.Second)) {
		t.Fatal("a repeat 25s later (answer used until +55s, within the margin of +60s) is covered")
	}
	other := []clawkerfw.Answer{{Name: "example.com", IP: ip, RuleIDs: []uint32{3, 4}, TTL: 30}}
	if r.covers(other, now.Add(time.Second)) {
		t.Fatal("the same address with another rule set is covered")
	}
	r.forget()
	if r.covers(a, now.Add(time.Second)) {
		t.Fatal("covered after forget (a policy change)")
	}
}
