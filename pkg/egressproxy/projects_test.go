package egressproxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// tlsClientFrom is tlsClient from the loopback source src, as an agent at
// that address would connect.
func (w *world) tlsClientFrom(src, name string) (*tls.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", w.addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{ServerName: name, RootCAs: w.ca.pool})
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return tc, nil
}

// helloLoop answers "hello\n" with "world <name>\n" until the client goes.
func helloLoop(name string) func(*tls.Conn) {
	return func(c *tls.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil || line != "hello\n" {
				return
			}
			io.WriteString(c, "world "+name+"\n")
		}
	}
}

func (w *world) setProjectsPolicy(agents map[string]string, entries ...egressrules.Entry) {
	w.t.Helper()
	p, err := egressrules.Doc{Generation: genCounter.Add(1), PrivateDestinations: loopback, Rules: entries, Agents: agents}.Compile()
	if err != nil {
		w.t.Fatal(err)
	}
	w.proxy.SetPolicy(p)
}

// Two agents of two projects (sources 127.0.0.2 and 127.0.0.3): each
// reaches the global name and its own project's, and is refused the other
// project's; a client the doc does not name gets the global rules only. A
// policy swap keeps each live connection its project allows.
func TestProjectsDecidedBySourceAddress(t *testing.T) {
	w := newWorld(t)
	for _, n := range []string{"shared.example.test", "api.example.test", "web.example.test"} {
		w.tlsServer(n, nil, helloLoop(n))
	}
	entries := []egressrules.Entry{
		{ID: 1, Rule: httpsRule("shared.example.test")},
		{ID: 2, Rule: egressrules.Rule{Dst: "api.example.test", Projects: []string{"alpha"}}},
		{ID: 3, Rule: egressrules.Rule{Dst: "web.example.test", Projects: []string{"beta"}}},
	}
	agents := map[string]string{"127.0.0.2": "alpha", "127.0.0.3": "beta"}
	w.setProjectsPolicy(agents, entries...)

	cases := []struct {
		src, name string
		allow     bool
	}{
		{"127.0.0.2", "api.example.test", true},
		{"127.0.0.2", "web.example.test", false},
		{"127.0.0.3", "web.example.test", true},
		{"127.0.0.3", "api.example.test", false},
		{"127.0.0.2", "shared.example.test", true},
		{"127.0.0.3", "shared.example.test", true},
		{"127.0.0.1", "shared.example.test", true},
		{"127.0.0.1", "api.example.test", false},
		{"127.0.0.1", "web.example.test", false},
	}
	for _, c := range cases {
		tc, err := w.tlsClientFrom(c.src, c.name)
		if !c.allow {
			if err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Errorf("%s -> %s: %v, want the access_denied alert", c.src, c.name, err)
			}
			if tc != nil {
				tc.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%s -> %s: %v", c.src, c.name, err)
			continue
		}
		if got := roundTrip(t, tc); got != "world "+c.name+"\n" {
			t.Errorf("%s -> %s: reply %q", c.src, c.name, got)
		}
		tc.Close()
	}
	l := w.waitLog(func(l logLine) bool {
		return l.Host == "web.example.test" && strings.HasPrefix(l.Src, "127.0.0.2:")
	})
	if l.Verdict != "denied" || !strings.Contains(l.Reason, "no rule allows web.example.test") {
		t.Errorf("log of alpha's refusal: %+v", l)
	}

	// A live connection of alpha's survives a swap that keeps its rule,
	// and is reset by one that moves the rule to beta.
	tc, err := w.tlsClientFrom("127.0.0.2", "api.example.test")
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got := roundTrip(t, tc); got != "world api.example.test\n" {
		t.Fatalf("reply %q", got)
	}
	w.setProjectsPolicy(agents, entries...)
	if got := roundTrip(t, tc); got != "world api.example.test\n" {
		t.Fatalf("after a swap keeping the rule: %q", got)
	}
	moved := append([]egressrules.Entry(nil), entries...)
	moved[1].Rule.Projects = []string{"beta"}
	w.setProjectsPolicy(agents, moved...)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Write([]byte("hello\n")); err == nil {
		buf := make([]byte, 64)
		if n, err := tc.Read(buf); err == nil {
			t.Fatalf("connection still open after its rule moved to another project: %q", buf[:n])
		}
	}
}
