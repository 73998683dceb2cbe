package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"

	"github.com/clawker/clawker-cp/scripts/dns/clawkerfw"
	"github.com/clawker/clawker-cp/scripts/dns/internal/dnstestenv"
)

func parse(args ...string) (*options, error) {
	fs := flag.NewFlagSet("clawker-dns", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return parseFlags(fs, args)
}

func TestFlags(t *testing.T) {
	for _, bad := range [][]string{
		{},                               // no upstream: there is no default resolver
		{"--upstream", "dns.example:53"}, // names would need a resolver
		{"--upstream", "10.0.0.1"},       // no port
		{"--upstream", "10.0.0.1:53", "--listen", "localhost:53"},
		{"--upstream", "10.0.0.1:53", "--report-timeout", "0s"},
		{"--upstream", "10.0.0.1:53", "extra"},
	} {
		if _, err := parse(bad...); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	o, err := parse("--upstream", "10.0.0.1:53, 10.0.0.2:5353", "--listen", "127.0.0.1:5300", "--cache-ttl", "60s")
	if err != nil {
		t.Fatal(err)
	}
	got := renderCorefile(o)
	for _, want := range []string{".:5300 {", "bind 127.0.0.1", "clawkerfw main", "cache 60 {", "forward . 10.0.0.1:53 10.0.0.2:5353"} {
		if !strings.Contains(got, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, got)
		}
	}
	if o, _ := parse("--upstream", "10.0.0.1:53"); strings.Contains(renderCorefile(o), "bind") {
		t.Error("--listen :53 must listen on every address")
	}
}

// TestRenderedCorefileServes starts what main would start (its Corefile,
// Directives and plugins) from a policy file, in this process.
func TestRenderedCorefileServes(t *testing.T) {
	dnsserver.Directives = Directives
	up := dnstestenv.NewUpstream(t, "allowed.test. 60 IN A 203.0.113.10")
	pol := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(pol, []byte(`{"generation": 5, "rules": [{"dst": "allowed.test", "id": 3}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parse("--listen", "127.0.0.1:0", "--upstream", up.Addr, "--policy-file", pol, "--no-report")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := readPolicyFile(o.policyFile)
	if err != nil {
		t.Fatal(err)
	}
	fw := clawkerfw.New()
	fw.Reporter = clawkerfw.AcceptAll
	if err := fw.SetDoc(doc); err != nil {
		t.Fatal(err)
	}
	clawkerfw.Register(firewallName, fw)
	defer clawkerfw.Unregister(firewallName)
	udp, tcp := dnstestenv.StartCoreDNS(t, renderCorefile(o))

	c := &dns.Client{Timeout: 5 * time.Second}
	q := new(dns.Msg).SetQuestion("allowed.test.", dns.TypeA)
	m, _, err := c.Exchange(q, udp)
	if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("allowed.test: %v %v", m, err)
	}
	q = new(dns.Msg).SetQuestion(clawkerfw.HealthName, dns.TypeTXT)
	q.Question[0].Qclass = dns.ClassCHAOS
	c.Net = "tcp"
	m, _, err = c.Exchange(q, tcp)
	if err != nil || len(m.Answer) != 1 || strings.Join(m.Answer[0].(*dns.TXT).Txt, " ") != "generation=5 rules=1" {
		t.Fatalf("health: %v %v", m, err)
	}
	if !strings.Contains(startupLine(fw, o), "policy generation 5") {
		t.Error(startupLine(fw, o))
	}
}

func TestPolicyFileRejectsUnknownFields(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(pol, []byte(`{"generation": 1, "rulez": []}`), 0o600)
	if _, err := readPolicyFile(pol); err == nil {
		t.Fatal("a misspelt field was accepted")
	}
}

// --query-log puts one JSON line per decided query on the given stdout;
// without it the Firewall has no query log and nothing is written.
func TestQueryLogFlag(t *testing.T) {
	dnsserver.Directives = Directives
	up := dnstestenv.NewUpstream(t, "allowed.test. 60 IN A 203.0.113.10")
	pol := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(pol, []byte(`{"generation": 1, "rules": [{"dst": "allowed.test", "id": 3}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, on := range []bool{false, true} {
		args := []string{"--listen", "127.0.0.1:0", "--upstream", up.Addr, "--policy-file", pol, "--no-report"}
		if on {
			args = append(args, "--query-log")
		}
		o, err := parse(args...)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := readPolicyFile(o.policyFile)
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder // written only by the log's goroutine, read after Close
		fw := newFirewall(o, &out)
		if (fw.QueryLog != nil) != on {
			t.Fatalf("--query-log %v: query log %v", on, fw.QueryLog)
		}
		if err := fw.SetDoc(doc); err != nil {
			t.Fatal(err)
		}
		clawkerfw.Register(firewallName, fw)
		udp, _ := dnstestenv.StartCoreDNS(t, renderCorefile(o))
		c := &dns.Client{Timeout: 5 * time.Second}
		m, _, err := c.Exchange(new(dns.Msg).SetQuestion("allowed.test.", dns.TypeA), udp)
		clawkerfw.Unregister(firewallName)
		if err != nil || len(m.Answer) != 1 {
			t.Fatalf("allowed.test: %v %v", m, err)
		}
		if fw.QueryLog != nil {
			fw.QueryLog.Close()
		}
		lines := strings.Count(out.String(), "\n")
		if on && (lines != 1 || !strings.Contains(out.String(), `"name":"allowed.test"`)) {
			t.Errorf("--query-log: %q", out.String())
		}
		if !on && out.Len() != 0 {
			t.Errorf("no --query-log, yet %q", out.String())
		}
	}
}
