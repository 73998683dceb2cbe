package cptest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/clawker/clawker-cp/pkg/certs"
)

// Agent is the agent port (clawkerd's AgentService).
func (p Ports) Agent() int { return p["control_plane.agent_port"] }

// Admin is the admin port (the CLI's AdminService).
func (p Ports) Admin() int { return p["control_plane.admin_port"] }

// Loopback is "127.0.0.1:<port>".
func Loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// RandomContainerID returns a random full Docker container id: 64 lowercase
// hex digits.
func RandomContainerID(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("cptest: random container id: %v", err)
	}
	return hex.EncodeToString(b)
}

// AgentCert mints an agent certificate for id with the host-side material m
// (certs.MintAgentCert, as `clawker` does for a new container) and returns
// it as a tls.Certificate whose Leaf is set.
func AgentCert(t testing.TB, m *certs.Material, id certs.AgentIdentity) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := m.MintAgentCert(id, 24*time.Hour)
	if err != nil {
		t.Fatalf("cptest: minting an agent cert for %s.%s: %v", id.Project, id.Agent, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("cptest: agent key pair: %v", err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			t.Fatal(err)
		}
	}
	return pair
}

// AgentTLSConfig mints an agent certificate for id and builds clawkerd's
// client config from the PEM files, with certs.AgentClientTLSConfig (the
// code clawkerd runs). The minted leaf is returned too.
func AgentTLSConfig(t testing.TB, m *certs.Material, id certs.AgentIdentity) (*tls.Config, *x509.Certificate) {
	t.Helper()
	certPEM, keyPEM, err := m.MintAgentCert(id, 24*time.Hour)
	if err != nil {
		t.Fatalf("cptest: minting an agent cert for %s.%s: %v", id.Project, id.Agent, err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.CA.Raw})
	cfg, err := certs.AgentClientTLSConfig(caPEM, certPEM, keyPEM, "")
	if err != nil {
		t.Fatalf("cptest: agent client TLS config: %v", err)
	}
	blk, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("cptest: parsing the minted agent cert: %v", err)
	}
	return cfg, leaf
}

// CLICert is the CLI's certificate from m, as a tls.Certificate.
func CLICert(m *certs.Material) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{m.CLI.Raw}, PrivateKey: m.CLIKey, Leaf: m.CLI}
}

// SignLeaf signs tmpl with m's CA key over a fresh P-256 key: a way to make
// certificates clawker never issues (missing SANs, wrong usage, expired...)
// to test that the control plane refuses them. Zero serial, validity and key
// usages are filled in with what clawker's own leaves carry.
func SignLeaf(t testing.TB, m *certs.Material, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber == nil {
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SerialNumber = serial
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.CA, &key.PublicKey, m.CAKey)
	if err != nil {
		t.Fatalf("cptest: signing a test leaf: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// ClientTLS is a TLS 1.3 client config that trusts m's CA (so it accepts
// the control plane's server certificate) and presents cert.
func ClientTLS(m *certs.Material, cert tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(m.CA)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
		ServerName:   certs.ServerCommonName,
	}
}

// Conn is a gRPC client connection that remembers the local address of
// every TCP connection it opened, so a test can find the control plane's
// log lines about it (their "peer" field).
type Conn struct {
	*grpc.ClientConn
	mu     sync.Mutex
	locals []string
}

// LocalAddrs lists the local addresses of the TCP connections opened so far.
func (c *Conn) LocalAddrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.locals...)
}

// HasLocal reports whether addr is one of LocalAddrs.
func (c *Conn) HasLocal(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.locals {
		if a == addr {
			return true
		}
	}
	return false
}

// DialGRPC makes a gRPC client for addr ("127.0.0.1:port") over TLS with
// cfg. Like grpc.NewClient it connects lazily, on the first call. It is
// closed when the test ends (closing it earlier is fine).
func DialGRPC(t testing.TB, addr string, cfg *tls.Config, opts ...grpc.DialOption) *Conn {
	t.Helper()
	c := &Conn{}
	dial := func(ctx context.Context, a string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", a)
		if err == nil {
			c.mu.Lock()
			c.locals = append(c.locals, nc.LocalAddr().String())
			c.mu.Unlock()
		}
		return nc, err
	}
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(dial),
	}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+addr, all...)
	if err != nil {
		t.Fatalf("cptest: gRPC client for %s: %v", addr, err)
	}
	c.ClientConn = cc
	t.Cleanup(func() { _ = cc.Close() })
	return c
}

// ProcStatusKB reads a "kB" field of /proc/<pid>/status, such as "VmRSS" or
// "VmHWM" (Linux only).
func ProcStatusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		num := strings.TrimSuffix(strings.TrimSpace(v), " kB")
		return strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// CountFDs counts the open file descriptors of pid (Linux only).
func CountFDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}
