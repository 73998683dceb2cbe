package cptest

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// serveOnce runs one TLS handshake with the CP's agent listener config and
// returns the server's verdict.
func serveOnce(t *testing.T, m *certs.Material, client *tls.Config) error {
	t.Helper()
	srvCfg, err := m.ServerTLSConfig(certs.AgentCommonName)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte{0})
		}
		done <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	return <-done
}

func TestAgentCertHelpers(t *testing.T) {
	m := NewHome(t).EnsureAuth(t)
	id := certs.AgentIdentity{Project: "p.q", Agent: "a", ContainerID: RandomContainerID(t)}
	if err := id.Validate(); err != nil {
		t.Fatalf("RandomContainerID made an invalid identity: %v", err)
	}

	cfg, leaf := AgentTLSConfig(t, m, id)
	got, err := certs.ParseAgentIdentity(leaf)
	if err != nil || got != id {
		t.Fatalf("AgentTLSConfig minted %+v (%v), want %+v", got, err, id)
	}
	if err := serveOnce(t, m, cfg); err != nil {
		t.Errorf("the agent listener refused AgentTLSConfig's cert: %v", err)
	}

	pair := AgentCert(t, m, id)
	if pair.Leaf == nil || pair.Leaf.Subject.CommonName != certs.AgentCommonName {
		t.Fatalf("AgentCert leaf %+v", pair.Leaf)
	}
	if err := serveOnce(t, m, ClientTLS(m, pair)); err != nil {
		t.Errorf("the agent listener refused AgentCert's cert: %v", err)
	}
	sum := sha256.Sum256(pair.Leaf.Raw)
	if certs.Thumbprint(pair.Leaf) != hex.EncodeToString(sum[:]) {
		t.Error("thumbprint is not the hex SHA-256 of the DER")
	}

	// SignLeaf makes certificates the listener's own checks refuse.
	bad := SignLeaf(t, m, &x509.Certificate{Subject: pkix.Name{CommonName: certs.AgentCommonName}})
	if err := bad.Leaf.CheckSignatureFrom(m.CA); err != nil {
		t.Fatalf("SignLeaf's cert is not signed by the CA: %v", err)
	}
	if err := serveOnce(t, m, ClientTLS(m, bad)); err == nil {
		t.Error("the agent listener accepted a cert without SANs")
	}
	if err := serveOnce(t, m, ClientTLS(m, CLICert(m))); err == nil {
		t.Error("the agent listener accepted the CLI cert")
	}
}

func TestPortsAndProcHelpers(t *testing.T) {
	h := NewHome(t)
	p := h.Ports(t)
	if p.Agent() == 0 || p.Admin() == 0 || p.Agent() == p.Admin() {
		t.Errorf("agent port %d, admin port %d", p.Agent(), p.Admin())
	}
	if got := Loopback(7444); got != "127.0.0.1:7444" {
		t.Errorf("Loopback = %q", got)
	}
	RaiseNoFile(t, 64)
	if runtime.GOOS != "linux" {
		t.Skip("/proc")
	}
	rss, err := ProcStatusKB(os.Getpid(), "VmRSS")
	if err != nil || rss <= 0 {
		t.Errorf("VmRSS = %d, %v", rss, err)
	}
	if _, err := ProcStatusKB(os.Getpid(), "NoSuchField"); err == nil {
		t.Error("a missing field read without error")
	}
	if n, err := CountFDs(os.Getpid()); err != nil || n < 3 {
		t.Errorf("CountFDs = %d, %v", n, err)
	}
}
