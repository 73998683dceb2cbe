package egressrules

import (
	"fmt"
	"testing"
)

// benchPolicy is ~1,000 rules: exact names, wildcards at two depths, IP
// rules and a few denies, like a large project's allow-list.
func benchPolicy() *Policy {
	var rules []Rule
	for i := range 400 {
		rules = append(rules, Rule{Dst: fmt.Sprintf("svc%d.example%d.com", i, i%50)})
	}
	for i := range 300 {
		rules = append(rules, Rule{Dst: fmt.Sprintf(".zone%d.org", i)})
		if i%3 == 0 {
			rules = append(rules, Rule{Dst: fmt.Sprintf(".deny.zone%d.org", i), Action: Deny})
		}
	}
	for i := range 100 {
		rules = append(rules, Rule{Dst: fmt.Sprintf(".cdn%d.net", i), Proto: HTTP, Port: PortRange{8000, 8100}})
	}
	for i := range 100 {
		rules = append(rules, Rule{Dst: fmt.Sprintf("10.%d.0.0/16", i), Proto: TCP, Port: Port(5432)})
	}
	return Compile(entries(rules...), nil)
}

func BenchmarkDecide(b *testing.B) {
	p := benchPolicy()
	if p.Len() < 1000 {
		b.Fatalf("only %d rules", p.Len())
	}
	cases := []struct {
		name, host string
		proto      Proto
		port       uint16
		allow      bool
	}{
		{"exact", "svc123.example23.com", HTTPS, 443, true},
		{"wildcard-deep", "a.b.c.d.zone77.org", HTTPS, 443, true},
		{"wildcard-deny", "x.deny.zone99.org", HTTPS, 443, false},
		{"wildcard-port", "img.cdn42.net", HTTP, 8080, true},
		{"ip", "10.42.7.9", TCP, 5432, true},
		{"upper-case", "SVC123.Example23.com.", HTTPS, 443, true},
		{"no-rule", "unknown.example.com", HTTPS, 443, false},
	}
	for _, c := range cases {
		if d := p.Decide(c.host, c.proto, c.port); d.Allow != c.allow {
			b.Fatalf("%s: %+v", c.name, d)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Decide(c.host, c.proto, c.port)
			}
		})
	}
}

func BenchmarkResolvable(b *testing.B) {
	p := benchPolicy()
	cases := []struct {
		name, host string
		ok         bool
	}{
		{"exact", "svc123.example23.com", true},
		{"wildcard-deep", "a.b.c.d.zone77.org", true},
		{"wildcard-deny", "x.deny.zone99.org", false},
		{"no-rule", "unknown.example.com", false},
	}
	for _, c := range cases {
		if _, ok := p.Resolvable(c.host); ok != c.ok {
			b.Fatalf("%s: %v", c.name, ok)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Resolvable(c.host)
			}
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	es := benchPolicy().Entries()
	b.ReportAllocs()
	for b.Loop() {
		Compile(es, nil)
	}
}
