package egressrules

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkProjectView: an allowed exact name decided by the global policy
// (Decide), and by an agent's project view found by its address
// (ForSource + Decide) in a policy of ~1,000 global rules plus 50 projects
// of 20 rules each and 200 agents; and the first, compiling, For of a
// project (a fresh policy every iteration).
func BenchmarkProjectView(b *testing.B) {
	var rules []Rule
	for i := range 1000 {
		rules = append(rules, Rule{Dst: fmt.Sprintf("svc%d.example%d.com", i, i%50)})
	}
	for p := range 50 {
		for i := range 20 {
			rules = append(rules, Rule{Dst: fmt.Sprintf("p%d-%d.example.net", p, i), Projects: []string{fmt.Sprintf("proj%d", p)}})
		}
	}
	agents := map[string]string{}
	for a := range 200 {
		agents[fmt.Sprintf("10.1.%d.%d", a/250, 1+a%250)] = fmt.Sprintf("proj%d", a%50)
	}
	doc := Doc{Rules: entries(rules...), Agents: agents}
	p, err := doc.Compile()
	if err != nil {
		b.Fatal(err)
	}
	src := netip.MustParseAddr("10.1.0.8") // agent 7: proj7
	b.Run("global", func(b *testing.B) {
		for b.Loop() {
			if !p.Decide("svc7.example7.com", HTTPS, 443).Allow {
				b.Fatal("denied")
			}
		}
	})
	b.Run("by-source", func(b *testing.B) {
		for b.Loop() {
			if !p.ForSource(src).Decide("p7-3.example.net", HTTPS, 443).Allow {
				b.Fatal("denied")
			}
		}
	})
	b.Run("first-view", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			fresh, _ := doc.Compile()
			b.StartTimer()
			if fresh.For("proj7").Len() != 1020 {
				b.Fatal("view size")
			}
		}
	})
}
