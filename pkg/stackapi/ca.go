// Package stackapi is the control plane's service for its own firewall
// siblings (the DNS server and the egress proxy): they fetch their policy
// from it and the DNS sibling reports every answer it is about to give, so
// the eBPF owner knows an IP before an agent can connect to it.
//
// Trust is its own domain: a stack CA that only the control plane holds
// (in its data directory, key 0600) signs the server's certificate and one
// client certificate per sibling, copied into the sibling's container
// before it starts. Neither agents nor the CLI hold anything this CA
// signed, so nothing but a sibling can fetch the policy or report answers,
// and a sibling's key opens nothing else.
package stackapi

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/clawker/clawker-cp/pkg/atomicfile"
)

// Names of the sibling identities (client certificate CNs) and of the
// server.
const (
	DNSClient   = "clawker-dns"
	ProxyClient = "clawker-proxy"
	ServerName  = "clawker-stack"
)

// Files of the stack material inside a sibling container.
const (
	SiblingDir   = "/stack"
	CAFile       = "ca.crt"
	ClientCert   = "client.crt"
	ClientKey    = "client.key"
	caKeyFile    = "stack-ca.key"
	caCertFile   = "stack-ca.crt"
	caValidity   = 10 * 365 * 24 * time.Hour
	leafBackdate = time.Hour // containers whose clock lags still accept a new leaf
)

// CA is the stack CA.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

// LoadOrCreateCA reads the stack CA from dir, creating it on first need.
// A half-written pair (a crash between the two files) is replaced whole.
func LoadOrCreateCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	if ca, err := loadCA(certPath, keyPath); err == nil {
		return ca, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		// Unreadable or mismatched: say so rather than silently rotate,
		// which would orphan running siblings' certificates.
		return nil, fmt.Errorf("stack CA in %s: %w (remove %s and %s to make a new one)", dir, err, caCertFile, caKeyFile)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("stack CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "clawker firewall stack CA"},
		NotBefore:             now.Add(-leafBackdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The key first: a crash after it leaves no certificate, which the
	// next start treats as "none yet" and replaces both.
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{cert: cert, key: key, certPEM: certPEM}, nil
}

func loadCA(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !cert.IsCA {
		return nil, errors.New("not an ECDSA CA")
	}
	if time.Now().After(cert.NotAfter) {
		return nil, errors.New("expired")
	}
	return &CA{cert: cert, key: key, certPEM: certPEM}, nil
}

// CertPEM is the CA certificate, what a sibling trusts.
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

func (ca *CA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// mint issues a leaf for cn. Leaves are short-lived enough to matter if a
// sibling's key leaks and long enough to outlive any sibling container the
// control plane does not replace (it re-mints on every (re)creation).
func (ca *CA) mint(cn string, eku x509.ExtKeyUsage, ips []netip.Addr, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-leafBackdate),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
		DNSNames:     []string{cn},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// ClientValidity is how long a sibling's certificate is valid.
const ClientValidity = 90 * 24 * time.Hour

// MintClient issues the client certificate of one sibling (DNSClient or
// ProxyClient).
func (ca *CA) MintClient(name string) (certPEM, keyPEM []byte, err error) {
	return ca.mint(name, x509.ExtKeyUsageClientAuth, nil, ClientValidity)
}

// ServerTLS is the server side: a fresh leaf for ServerName (what the
// siblings verify) and every address given, accepting only client
// certificates this CA signed.
func (ca *CA) ServerTLS(ips ...netip.Addr) (*tls.Config, error) {
	certPEM, keyPEM, err := ca.mint(ServerName, x509.ExtKeyUsageServerAuth, ips, 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool(),
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
}

// ClientTLS is a sibling's side, from the PEM files the control plane
// copied into its container.
func ClientTLS(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("stack client certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("stack CA: no certificate in PEM")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      roots,
		ServerName:   ServerName,
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
}

// The environment variables that carry a sibling's material (PEM): its
// root filesystem is read-only and nothing is mounted into it.
const (
	EnvCA   = "CLAWKER_STACK_CA"
	EnvCert = "CLAWKER_STACK_CERT"
	EnvKey  = "CLAWKER_STACK_KEY"
)

// ClientTLSFromEnv is a sibling's side from EnvCA, EnvCert and EnvKey.
func ClientTLSFromEnv(getenv func(string) string) (*tls.Config, error) {
	var missing []string
	for _, k := range []string{EnvCA, EnvCert, EnvKey} {
		if getenv(k) == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("stack material: %v not set (the control plane sets them when it creates the sibling)", missing)
	}
	return ClientTLS([]byte(getenv(EnvCA)), []byte(getenv(EnvCert)), []byte(getenv(EnvKey)))
}

// LoadClientTLS reads the three files from dir (SiblingDir in a sibling).
func LoadClientTLS(dir string) (*tls.Config, error) {
	var b [3][]byte
	for i, name := range []string{CAFile, ClientCert, ClientKey} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("stack material: %w", err)
		}
		b[i] = data
	}
	return ClientTLS(b[0], b[1], b[2])
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
