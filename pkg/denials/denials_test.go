package denials

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestWindowKeepsTheNewest(t *testing.T) {
	w := New(3)
	t0 := time.Unix(100, 0)
	for i := range 5 {
		w.Add(Record{Time: t0.Add(time.Duration(i) * time.Second), Name: string(rune('a' + i))})
	}
	got := w.Since(time.Time{})
	if len(got) != 3 || got[0].Name != "c" || got[2].Name != "e" {
		t.Fatalf("window %+v, want c d e oldest first", got)
	}
	if got := w.Since(t0.Add(4 * time.Second)); len(got) != 1 || got[0].Name != "e" {
		t.Fatalf("since the last: %+v", got)
	}
}

func TestSummarizeGroupsAndSuggests(t *testing.T) {
	a, b := netip.MustParseAddr("172.22.0.5"), netip.MustParseAddr("172.22.0.6")
	t0 := time.Unix(100, 0)
	rs := []Record{
		{Time: t0, Src: a, Where: "dns", Name: "registry.npmjs.org", Reason: "not in the egress policy"},
		{Time: t0.Add(time.Second), Src: b, Where: "dns", Name: "registry.npmjs.org", Reason: "not in the egress policy"},
		{Time: t0.Add(2 * time.Second), Src: a, Where: "proxy", Name: "example.com", Proto: "http", Reason: "no rule allows example.com on http/8080"},
		{Time: t0.Add(3 * time.Second), Src: a, Where: "proxy", Name: "evil.example.com", Proto: "https", Reason: "denied by .example.com:https:443"},
	}
	names := map[netip.Addr]string{a: "myapp/dev"}
	gs := Summarize(rs, func(ip netip.Addr) string { return names[ip] })
	if len(gs) != 3 {
		t.Fatalf("%d groups, want 3: %+v", len(gs), gs)
	}
	if gs[0].Name != "evil.example.com" || gs[0].Allow != "clawker firewall remove .example.com --proto https --port 443" {
		t.Errorf("deny group %+v", gs[0])
	}
	if gs[1].Allow != "clawker firewall add example.com --proto http --port 8080" {
		t.Errorf("http group %+v", gs[1])
	}
	npm := gs[2]
	if npm.Count != 2 || npm.Allow != "clawker firewall add registry.npmjs.org" || len(npm.Agents) != 2 ||
		npm.Agents[0] != "172.22.0.6" || npm.Agents[1] != "myapp/dev" || !npm.First.Equal(t0) || !npm.Last.Equal(t0.Add(time.Second)) {
		t.Errorf("dns group %+v", npm)
	}
}

// The kernel's refusals name their agent by address once mapped, group
// by destination and say how (or that nothing can) allow them.
func TestKernelRefusals(t *testing.T) {
	at := time.Unix(1_800_000_000, 0)
	agent := netip.MustParseAddr("192.0.2.10")
	recs := []Record{
		{Time: at, Src: agent, Where: WhereKernel, Name: "198.51.100.1:9", Proto: "udp", Reason: "deny-udp"},
		{Time: at.Add(time.Second), Src: agent, Where: WhereKernel, Name: "198.51.100.1:9", Proto: "udp", Reason: "deny-udp"},
		{Time: at, Src: agent, Where: WhereKernel, Name: "192.0.2.50:8080", Proto: "tcp", Reason: "deny-subnet"},
		{Time: at, Src: agent, Where: WhereKernel, Name: "192.0.2.202:7443", Proto: "tcp", Reason: "deny-cp"},
	}
	groups := Summarize(recs, func(netip.Addr) string { return "p/a" })
	if len(groups) != 3 {
		t.Fatalf("groups %+v, want 3", groups)
	}
	byName := map[string]Group{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	if g := byName["198.51.100.1:9"]; g.Count != 2 || !strings.HasPrefix(g.Allow, "none: agents send UDP only to DNS") {
		t.Errorf("udp group %+v", g)
	}
	if g := byName["192.0.2.50:8080"]; !strings.Contains(g.Allow, "clawker firewall add 192.0.2.50 --proto tcp --port 8080") || !strings.Contains(g.Allow, "agent_to_agent") {
		t.Errorf("subnet group %+v", g)
	}
	if g := byName["192.0.2.202:7443"]; !strings.HasPrefix(g.Allow, "none:") {
		t.Errorf("CP port group %+v", g)
	}
}

// A refusal on the agent network whose destination is another agent
// names that agent and the agent_to_agent setting, never an IP rule.
func TestNamePeers(t *testing.T) {
	at := time.Unix(1_800_000_000, 0)
	a, c := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.12")
	recs := []Record{
		{Time: at, Src: a, Where: WhereKernel, Name: "192.0.2.11:8080", Proto: "tcp", Reason: "deny-subnet"},
		{Time: at, Src: c, Where: WhereKernel, Name: "192.0.2.13:8080", Proto: "tcp", Reason: "deny-subnet"},
		{Time: at, Src: a, Where: WhereKernel, Name: "192.0.2.50:8080", Proto: "tcp", Reason: "deny-subnet"},
		{Time: at, Src: a, Where: WhereKernel, Name: "192.0.2.11:9", Proto: "udp", Reason: "deny-udp"},
	}
	who := map[netip.Addr]string{a: "alpha/a", c: "beta/c",
		netip.MustParseAddr("192.0.2.11"): "alpha/b", netip.MustParseAddr("192.0.2.13"): "alpha/d"}
	groups := Summarize(recs, func(ip netip.Addr) string { return who[ip] })
	NamePeers(groups, func(ip netip.Addr) string { return who[ip] })
	byName := map[string]Group{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	for name, want := range map[string]string{
		"192.0.2.11:8080": "agent alpha/b: firewall.agent_to_agent: project (same project) or allow",
		"192.0.2.13:8080": "agent alpha/d is in another project: firewall.agent_to_agent: allow",
		"192.0.2.50:8080": KernelAllow("192.0.2.50:8080", "tcp", "deny-subnet"),
		"192.0.2.11:9":    KernelAllow("192.0.2.11:9", "udp", "deny-udp"),
	} {
		if got := byName[name].Allow; got != want {
			t.Errorf("%s: allow %q, want %q", name, got, want)
		}
	}
	if got := PeerAllow("alpha/b", []string{"alpha/a", "192.0.2.9"}); !strings.HasSuffix(got, ": allow") {
		t.Errorf("an unnamed agent among the refused: %q, want the allow choice", got)
	}
}

func TestSummarizePathRefusals(t *testing.T) {
	a := netip.MustParseAddr("172.22.0.5")
	t0 := time.Unix(100, 0)
	rs := []Record{
		{Time: t0, Src: a, Where: WherePath, Name: "api.example.test", Proto: "https", Method: "POST", Path: "/admin",
			Reason: "no path rule matches; path_default deny", Allow: "clawker firewall add api.example.test --path /admin --action allow --methods POST"},
		{Time: t0.Add(time.Second), Src: a, Where: WherePath, Name: "api.example.test", Proto: "https", Method: "POST", Path: "/admin",
			Reason: "no path rule matches; path_default deny"},
		{Time: t0.Add(2 * time.Second), Src: a, Where: WherePath, Name: "api.example.test", Proto: "https", Method: "GET", Path: "/admin",
			Reason: "no path rule matches; path_default deny"},
	}
	gs := Summarize(rs, func(netip.Addr) string { return "" })
	if len(gs) != 2 {
		t.Fatalf("%d groups, want one per method and path: %+v", len(gs), gs)
	}
	get, post := gs[0], gs[1]
	if get.Method != "GET" || get.Path != "/admin" || get.Count != 1 ||
		get.Allow != "clawker firewall add api.example.test --path /admin --action allow --methods GET" {
		t.Errorf("GET group %+v", get)
	}
	// The command the proxy named is kept when a later record has none.
	if post.Count != 2 || post.Allow != "clawker firewall add api.example.test --path /admin --action allow --methods POST" {
		t.Errorf("POST group %+v", post)
	}
}

func TestPathAllowCommand(t *testing.T) {
	for _, tc := range []struct {
		host, proto  string
		port         int
		method, path string
		deny, want   string
	}{
		{"a.test", "https", 0, "GET", "/v1/x", "", "clawker firewall add a.test --path /v1/x --action allow --methods GET"},
		{"a.test", "http", 80, "PUT", "/x", "", "clawker firewall add a.test --proto http --path /x --action allow --methods PUT"},
		{"a.test", "http", 8080, "GET", "/x", "", "clawker firewall add a.test --proto http --port 8080 --path /x --action allow --methods GET"},
		{"a.test", "https", 443, "GET", "/v1/secret", "/v1/secret", "clawker firewall remove a.test --path /v1/secret"},
		{"a.test", "https", 0, "GET", "/a b;$(x)", "", `clawker firewall add a.test --path '/a b;$(x)' --action allow --methods GET`},
	} {
		if got := PathAllowCommand(tc.host, tc.proto, tc.port, tc.method, tc.path, tc.deny); got != tc.want {
			t.Errorf("%+v: %q", tc, got)
		}
	}
}

// A refused socket whose event says tcp is an MPTCP stream socket (the
// event's protocol byte truncates 262 to 6): its line says the client
// falls back, a raw socket's does not.
func TestKernelAllowSocket(t *testing.T) {
	if got := KernelAllow("", "tcp", "deny-socket"); !strings.Contains(got, "MPTCP") || !strings.Contains(got, "falls back to TCP") {
		t.Errorf("deny-socket tcp: %q, want the MPTCP fallback named", got)
	}
	if got := KernelAllow("", "raw", "deny-socket"); strings.Contains(got, "MPTCP") {
		t.Errorf("deny-socket raw: %q names MPTCP", got)
	}
}
