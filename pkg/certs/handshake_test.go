package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

type result struct {
	serverState tls.ConnectionState
	serverErr   error
	clientErr   error
}

// handshake runs one real TLS connection over loopback TCP. With TLS 1.3
// the client finishes before the server has judged its certificate, so the
// client also reads one byte: that surfaces the server's rejection alert.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type srvRes struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan srvRes, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- srvRes{err: err}
			return
		}
		defer c.Close()
		s := tls.Server(c, serverCfg)
		s.SetDeadline(time.Now().Add(5 * time.Second))
		err = s.Handshake()
		if err == nil {
			_, err = s.Write([]byte("k"))
		}
		done <- srvRes{s.ConnectionState(), err}
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl := tls.Client(c, clientCfg)
	cl.SetDeadline(time.Now().Add(5 * time.Second))
	cerr := cl.Handshake()
	if cerr == nil {
		_, cerr = cl.Read(make([]byte, 1))
	}
	r := <-done
	return result{r.state, r.err, cerr}
}

func TestHandshakeCLI(t *testing.T) {
	_, m := newAuth(t)
	admin, err := m.ServerTLSConfig(CLICommonName)
	if err != nil {
		t.Fatal(err)
	}
	if admin.MinVersion != tls.VersionTLS13 {
		t.Error("server not TLS 1.3 minimum")
	}
	cli, err := m.CLIClientTLSConfig("")
	if err != nil {
		t.Fatal(err)
	}
	r := handshake(t, admin, cli)
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("CLI refused: %+v", r)
	}
	if cn := r.serverState.PeerCertificates[0].Subject.CommonName; cn != CLICommonName {
		t.Errorf("peer CN %q", cn)
	}

	// The CLI cert is not an agent cert.
	agents, _ := m.ServerTLSConfig(AgentCommonName)
	if r := handshake(t, agents, cli); !errors.Is(r.serverErr, ErrWrongClient) || r.clientErr == nil {
		t.Errorf("CLI accepted on agent listener: %+v", r)
	}
}

func TestHandshakeAgent(t *testing.T) {
	_, m := newAuth(t)
	id := AgentIdentity{Project: "proj", Agent: "dev", ContainerID: strings.Repeat("0123456789abcdef", 4)}
	certPEM, keyPEM, err := m.MintAgentCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := m.ServerBundle()[CACertFile]
	agentCfg, err := AgentClientTLSConfig(caPEM, certPEM, keyPEM, "")
	if err != nil {
		t.Fatal(err)
	}

	admin, _ := m.ServerTLSConfig(CLICommonName)
	if r := handshake(t, admin, agentCfg); !errors.Is(r.serverErr, ErrWrongClient) || r.clientErr == nil {
		t.Errorf("agent accepted on admin listener: %+v", r)
	}

	agents, _ := m.ServerTLSConfig(AgentCommonName)
	r := handshake(t, agents, agentCfg)
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("agent refused: %+v", r)
	}
	got, err := ParseAgentIdentity(r.serverState.VerifiedChains[0][0])
	if err != nil || got != id {
		t.Errorf("identity %+v, %v", got, err)
	}
	if Thumbprint(r.serverState.PeerCertificates[0]) == "" {
		t.Error("empty thumbprint")
	}

	// An agent cert without its container SAN is refused at the handshake.
	badCert, badKey, _ := badAgentCert(t, m, AgentCommonName, AgentURNPrefix+"proj.dev")
	badCfg, err := AgentClientTLSConfig(caPEM, badCert, badKey, "")
	if err != nil {
		t.Fatal(err)
	}
	if r := handshake(t, agents, badCfg); !errors.Is(r.serverErr, ErrMissingContainerSAN) || r.clientErr == nil {
		t.Errorf("agent without container SAN accepted: %+v", r)
	}
}

func TestHandshakeForeignCA(t *testing.T) {
	_, m := newAuth(t)
	_, other := newAuth(t)

	// A CLI cert from another clawker install: trust our server so the
	// only thing under test is the server's judgement of the client.
	foreign, _ := other.CLIClientTLSConfig("")
	foreign.RootCAs = x509.NewCertPool()
	foreign.RootCAs.AddCert(m.CA)
	admin, _ := m.ServerTLSConfig(CLICommonName)
	r := handshake(t, admin, foreign)
	var ua x509.UnknownAuthorityError
	if !errors.As(r.serverErr, &ua) || r.clientErr == nil {
		t.Errorf("foreign client accepted: %+v", r)
	}

	// And the CLI refuses a server from another CA.
	cli, _ := m.CLIClientTLSConfig("")
	otherSrv, _ := other.ServerTLSConfig(CLICommonName)
	if r := handshake(t, otherSrv, cli); r.clientErr == nil {
		t.Error("CLI accepted a foreign server")
	}
}
