package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"time"
)

// Identities baked into certificates. The CP authorises a TLS client by the
// leaf CN (see ServerTLSConfig), so these strings are part of the protocol.
const (
	CACommonName     = "clawker root CA"
	ServerCommonName = "clawker-controlplane"
	CLICommonName    = "clawker-cli"
	AgentCommonName  = "clawkerd"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so a container whose clock lags the
	// host's (Docker Desktop VMs drift) does not reject a brand-new cert.
	clockSkew = time.Hour
)

// Sentinel causes, wrapped by validation errors and Item.Err.
var (
	ErrKeyMismatch = errors.New("private key does not match certificate")
	ErrExpired     = errors.New("certificate expired")
	ErrNotYetValid = errors.New("certificate not yet valid")
	ErrUntrusted   = errors.New("certificate not issued by the current CA")
	ErrWrongCert   = errors.New("certificate has the wrong identity or usage")
	ErrKeyExposed  = errors.New("private key file is readable by group or others")
	ErrCAReplaced  = errors.New("CA was regenerated, so this leaf was reissued")
)

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseCert reads exactly one CERTIFICATE block; anything else is a sign of
// a file we did not write.
func parseCert(data []byte) (*x509.Certificate, error) {
	b, rest := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// parseKey accepts only what encodeKey writes: a PKCS#8 P-256 ECDSA key.
func parseKey(data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("no PRIVATE KEY (PKCS#8) PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key is %T, want ECDSA P-256", k)
	}
	return ek, nil
}

func keyMatches(cert *x509.Certificate, key *ecdsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	return ok && pub.Equal(&key.PublicKey)
}

// checkTime reports ErrExpired/ErrNotYetValid with the date, because "run
// clawker auth rotate" is more convincing when the user sees why.
func checkTime(c *x509.Certificate, now time.Time) error {
	if now.After(c.NotAfter) {
		return fmt.Errorf("%w on %s", ErrExpired, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%w until %s", ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func newCA(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: CACommonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// MaxPathLenZero: the CA signs leaves directly and never an
		// intermediate, so a stolen leaf key cannot become a CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

// leafSpec is what differs between the leaves we issue.
type leafSpec struct {
	cn   string
	eku  x509.ExtKeyUsage
	dns  []string
	ips  []net.IP
	uris []string
}

// issueLeaf signs a fresh P-256 key with the CA. NotAfter is clamped to the
// CA's so no leaf outlives its issuer (verification would fail anyway, but
// the reported expiry would be a lie).
func issueLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, s leafSpec, now time.Time, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	c, err := signLeaf(ca, caKey, &key.PublicKey, s, now.Add(-clockSkew), now.Add(validity))
	return c, key, err
}

// signLeaf signs pub with the CA for [notBefore, notAfter], notAfter
// clamped to the CA's (an agent's chain of leaves shares one key).
func signLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, pub *ecdsa.PublicKey, s leafSpec, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: s.cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{s.eku},
		BasicConstraintsValid: true,
		DNSNames:              s.dns,
		IPAddresses:           s.ips,
	}
	for _, u := range s.uris {
		pu, err := parseURN(u)
		if err != nil {
			return nil, err
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// verifyLeaf checks that leaf chains to ca for the given usage at now.
func verifyLeaf(leaf, ca *x509.Certificate, eku x509.ExtKeyUsage, now time.Time) error {
	if err := checkTime(leaf, now); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
		var ua x509.UnknownAuthorityError
		if errors.As(err, &ua) {
			return fmt.Errorf("%w: %v", ErrUntrusted, err)
		}
		return fmt.Errorf("%w: %v", ErrWrongCert, err)
	}
	return nil
}

// serverSpec lists the names the CP must answer to: localhost for the host
// port mapping, the container name on clawker-net, and its static IPs.
func serverSpec(extraIPs []net.IP) leafSpec {
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, ip := range extraIPs {
		if ip != nil && !ip.Equal(ips[0]) {
			ips = append(ips, ip)
		}
	}
	return leafSpec{
		cn:  ServerCommonName,
		eku: x509.ExtKeyUsageServerAuth,
		dns: []string{"localhost", ServerCommonName},
		ips: ips,
	}
}

func cliSpec() leafSpec {
	return leafSpec{cn: CLICommonName, eku: x509.ExtKeyUsageClientAuth}
}

// coversSpec checks that an existing leaf still says what we would issue
// today: right CN, and for the server every required name, so that adding a
// CP address makes Ensure reissue the server cert instead of failing later
// in a handshake.
func coversSpec(c *x509.Certificate, s leafSpec) error {
	if c.Subject.CommonName != s.cn {
		return fmt.Errorf("%w: CN %q, want %q", ErrWrongCert, c.Subject.CommonName, s.cn)
	}
	for _, n := range s.dns {
		if err := c.VerifyHostname(n); err != nil {
			return fmt.Errorf("%w: %v", ErrWrongCert, err)
		}
	}
	for _, ip := range s.ips {
		if err := c.VerifyHostname(ip.String()); err != nil {
			return fmt.Errorf("%w: %v", ErrWrongCert, err)
		}
	}
	return nil
}
