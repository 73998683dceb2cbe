package agentd

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// mintChain mints e's CA a chain for p.a starting at start.
func mintChain(t *testing.T, m *certs.Material, start time.Time) (chainPEM, keyPEM []byte) {
	t.Helper()
	c := certs.DefaultAgentChain
	c.Start = start
	chainPEM, keyPEM, err := m.MintAgentChain(certs.AgentIdentity{Project: "p", Agent: "a", ContainerID: testContainerID}, c)
	if err != nil {
		t.Fatal(err)
	}
	return chainPEM, keyPEM
}

// The leaf presented is, of those valid now, the one with the latest
// NotAfter; before the chain starts, its first; past its end, its last
// with errChainExhausted.
func TestPickLeaf(t *testing.T) {
	e := newEnv(t)
	t0 := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)
	chainPEM, keyPEM := mintChain(t, e.m, t0)
	c, err := loadLeafChain(chainPEM, keyPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	dc := certs.DefaultAgentChain
	if len(c.certs) != dc.Leaves {
		t.Fatalf("%d leaves, want %d", len(c.certs), dc.Leaves)
	}
	day := 24 * time.Hour
	for _, tc := range []struct {
		name      string
		at        time.Time
		leaf      int
		exhausted bool
	}{
		{"at the mint", t0, 0, false},
		{"the hour of skew before it", t0.Add(-30 * time.Minute), 0, false},
		{"before the chain", t0.Add(-2 * time.Hour), 0, false},
		{"22 h in: only the first is valid", t0.Add(22 * time.Hour), 0, false},
		{"23.5 h in: the second overlaps and lasts longer", t0.Add(23*time.Hour + 30*time.Minute), 1, false},
		{"three days in", t0.Add(3 * day), 3, false},
		{"three days and 23 h 30 in", t0.Add(3*day + 23*time.Hour + 30*time.Minute), 4, false},
		{"the last day", t0.Add(29*day + time.Hour), 29, false},
		{"the chain's last second", t0.Add(29*day + dc.Validity), 29, false},
		{"past the end", t0.Add(29*day + dc.Validity + time.Second), 29, true},
		{"long past the end", t0.Add(365 * day), 29, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.pick(tc.at)
			if (err != nil) != tc.exhausted || (err != nil && err != errChainExhausted) {
				t.Fatalf("err = %v, want exhausted=%v", err, tc.exhausted)
			}
			if got != &c.certs[tc.leaf] {
				for i := range c.certs {
					if got == &c.certs[i] {
						t.Fatalf("picked leaf %d (%s..%s), want %d", i, got.Leaf.NotBefore, got.Leaf.NotAfter, tc.leaf)
					}
				}
				t.Fatalf("picked %v, no leaf of the chain", got)
			}
		})
	}
	if end := c.end(); !end.Equal(t0.Add(29*day + dc.Validity)) {
		t.Errorf("end %s, want %s", end, t0.Add(29*day+dc.Validity))
	}
}

// A file whose leaves are not all of the key is refused at start, naming
// the leaf; so is one of another agent's leaves.
func TestLoadLeafChainRefusesForeignLeaves(t *testing.T) {
	e := newEnv(t)
	chainPEM, keyPEM := mintChain(t, e.m, time.Now())
	otherPEM, _ := mintChain(t, e.m, time.Now()) // another key
	mixed := append(append([]byte{}, chainPEM...), otherPEM[:bytes.Index(otherPEM[1:], []byte("-----BEGIN"))+1]...)
	if _, err := loadLeafChain(mixed, keyPEM, nil); err == nil || !strings.Contains(err.Error(), "certificate 31 with --key") {
		t.Errorf("a leaf of another key: %v, want certificate 31 named", err)
	}
	foreign, _, err := e.m.MintAgentCert(certs.AgentIdentity{Project: "p", Agent: "b", ContainerID: testContainerID}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadLeafChain(append(append([]byte{}, chainPEM...), foreign...), keyPEM, nil); err == nil {
		t.Error("a leaf of another agent was accepted")
	}
	if _, err := loadLeafChain([]byte("nothing"), keyPEM, nil); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("no certificate: %v", err)
	}
	// Through the flags: the error names --cert.
	e.writeFile(t, e.cfg.CertFile, mixed)
	e.writeFile(t, e.cfg.KeyFile, keyPEM)
	if _, _, err := e.cfg.tlsConfig(); err == nil || !strings.Contains(err.Error(), "--cert") {
		t.Errorf("tlsConfig: %v, want the --cert flag named", err)
	}
}

func (e *testEnv) writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Every handshake asks the clock again: a clawkerd that runs for days
// moves on to the next leaf at its next dial, with no restart.
func TestHandshakePresentsTheLeafValidNow(t *testing.T) {
	e := newEnv(t)
	t0 := time.Now()
	chainPEM, keyPEM := mintChain(t, e.m, t0)
	var mu sync.Mutex
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c, err := loadLeafChain(chainPEM, keyPEM, clock)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(e.cfg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := c.clientConfig(caPEM, certs.ServerCommonName)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := e.m.ServerTLSConfig(certs.AgentCommonName)
	if err != nil {
		t.Fatal(err)
	}
	// The server takes any client leaf (the days-ahead ones are not valid
	// by its real clock) and says which it got.
	srv.ClientAuth, srv.VerifyConnection = tls.RequireAnyClientCert, nil
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan *x509.Certificate, 1)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tc := conn.(*tls.Conn)
			if err := tc.Handshake(); err == nil {
				seen <- tc.ConnectionState().PeerCertificates[0]
			}
			conn.Close()
		}
	}()
	for _, day := range []int{0, 1, 5, 29} {
		mu.Lock()
		now = t0.Add(time.Duration(day)*24*time.Hour + time.Hour)
		mu.Unlock()
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatalf("day %d: %v", day, err)
		}
		_ = conn.Close()
		if got := <-seen; !got.Equal(c.certs[day].Leaf) {
			t.Errorf("day %d: the server got the leaf valid %s..%s, want leaf %d", day, got.NotBefore, got.NotAfter, day)
		}
	}
}

// Past the chain's end clawkerd logs agent_certs_exhausted once, naming
// the fix, and keeps dialing (the control plane's clock decides).
func TestChainExhaustedIsLoggedOnce(t *testing.T) {
	e := newEnv(t)
	chainPEM, keyPEM := mintChain(t, e.m, time.Now().Add(-40*24*time.Hour))
	e.writeFile(t, e.cfg.CertFile, chainPEM)
	e.writeFile(t, e.cfg.KeyFile, keyPEM)
	r := e.run()
	defer r.cancel()
	l := e.logs.waitEvent(t, "agent_certs_exhausted")
	msg, _ := l["msg"].(string)
	if l["level"] != "ERROR" || !strings.Contains(msg, "clawker rm --force a && clawker run") || !strings.Contains(msg, "30 leaves") {
		t.Errorf("agent_certs_exhausted = %v; want an error naming the fix", l)
	}
	// More dials, one line.
	deadline := time.Now().Add(10 * time.Second)
	for len(e.logs.events(t, "register_retry"))+len(e.logs.events(t, "reconnecting")) < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(e.logs.events(t, "agent_certs_exhausted")); n != 1 {
		t.Errorf("%d agent_certs_exhausted lines over several dials, want 1", n)
	}
}
