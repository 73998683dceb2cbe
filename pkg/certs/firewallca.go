package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The firewall CA signs the leaves the egress proxy presents to an agent
// for a name it inspects (a rule with path rules). It is a CA of its own,
// apart from the auth CA above: agents trust it for the web, and it must
// never be able to vouch for a clawker identity (CP, CLI, clawkerd). Its
// directory is the egress rules store's ($XDG_DATA_HOME/clawker/firewall),
// which the CP container mounts; the key never goes into an agent.
const (
	FirewallCACertFile   = "ca.crt"
	FirewallCAKeyFile    = "ca.key"
	FirewallCACommonName = "clawker firewall CA"
)

const (
	// inspectionLeafValidity is short on purpose: the proxy mints leaves
	// on the fly and caches them, so nothing is gained by a long life and
	// a leaked leaf key is worthless by tomorrow.
	inspectionLeafValidity = 24 * time.Hour
	// inspectionLeafSkew backdates a minted leaf a little: the agent's
	// clock is the host's (same kernel), so a minute covers rounding.
	inspectionLeafSkew = time.Minute
)

// FirewallCA is the firewall CA as read from (or written to) its directory.
type FirewallCA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
	// Fingerprint is the hex SHA-256 of Cert.Raw: what an agent container's
	// dev.clawker.firewall-ca label records, to tell who trusts which CA.
	Fingerprint string
}

// FirewallCAPaths returns dir/ca.crt (0644) and dir/ca.key (0600).
func FirewallCAPaths(dir string) (certPath, keyPath string) {
	return filepath.Join(dir, FirewallCACertFile), filepath.Join(dir, FirewallCAKeyFile)
}

// CertFingerprint is the hex SHA-256 of a certificate's DER.
func CertFingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// LoadFirewallCA reads and checks the firewall CA in dir. It creates
// nothing; an absent CA is an error wrapping fs.ErrNotExist.
func LoadFirewallCA(dir string) (*FirewallCA, error) {
	unlock, err := lockDir(dir, false)
	if err != nil {
		return nil, fmt.Errorf("certs: firewall CA: lock %s: %w", dir, err)
	}
	defer unlock()
	ca, err := readFirewallCA(dir, time.Now())
	if err != nil {
		return nil, fmt.Errorf("certs: firewall CA: %w", err)
	}
	return ca, nil
}

// EnsureFirewallCA returns the firewall CA in dir, making it when it is
// absent or unusable (created=true then). Two processes ensuring at once
// (the CLI on the host, the CP in its container, over the same files) get
// the same CA: the exclusive flock serialises them and the second one
// reads what the first wrote.
func EnsureFirewallCA(dir string) (*FirewallCA, bool, error) {
	unlock, err := lockFirewallDir(dir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	now := time.Now()
	ca, err := readFirewallCA(dir, now)
	switch {
	case err == nil:
		return ca, false, nil
	case errors.Is(err, fs.ErrPermission):
		// Someone else's files (a CP running as root made them): not
		// ours to replace, which would rotate the CA behind its back.
		return nil, false, fmt.Errorf("certs: firewall CA: %w; give the files back to this user (chown) or remove them to make a new CA", err)
	}
	// Absent, half-written by a crash between key and cert (the key is
	// written first, so that shows as a mismatch), expired or corrupt: a
	// CA nobody can use is replaced. Agents trusting a broken one are
	// listed by rotate-ca like any other.
	ca, err = writeNewFirewallCA(dir, now)
	if err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// RotateFirewallCA replaces the firewall CA with a new one and returns
// both (old is nil when there was none, or it was unusable). Leaves minted
// from old stop verifying in agents that trust only cur, and vice versa.
func RotateFirewallCA(dir string) (old, cur *FirewallCA, err error) {
	unlock, err := lockFirewallDir(dir)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	now := time.Now()
	old, _ = readFirewallCA(dir, now) // an unusable old CA is replaced all the same
	cur, err = writeNewFirewallCA(dir, now)
	if err != nil {
		return nil, nil, err
	}
	return old, cur, nil
}

// lockFirewallDir creates dir (0700) and takes the exclusive lock, after
// sweeping temp files a crashed writer left.
func lockFirewallDir(dir string) (func(), error) {
	if err := ensureDir(dir); err != nil {
		return nil, fmt.Errorf("certs: firewall CA dir: %w", err)
	}
	unlock, err := lockDir(dir, true)
	if err != nil {
		return nil, fmt.Errorf("certs: firewall CA: lock %s: %w", dir, err)
	}
	if err := removeStaleFirewallTemps(dir); err != nil {
		unlock()
		return nil, fmt.Errorf("certs: firewall CA: %w", err)
	}
	if err := giveToDirOwner(dir, lockName, FirewallCAKeyFile, FirewallCACertFile); err != nil {
		unlock()
		return nil, fmt.Errorf("certs: firewall CA: %w", err)
	}
	return unlock, nil
}

// giveToDirOwner chowns dir's files names to dir's owner when this process
// is root and the owner is not. The directory is the host user's, mounted
// into a CP that runs as root: a lock file or CA that the CP made must stay
// usable by that user's `clawker run`, which would otherwise be refused
// the lock, or be unable to read the CA.
func giveToDirOwner(dir string, names ...string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid, ok := fileOwner(dir)
	if !ok || uid == 0 {
		return nil
	}
	for _, n := range names {
		if err := os.Lchown(filepath.Join(dir, n), uid, gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// removeStaleFirewallTemps is removeStaleTemps limited to our two files:
// the directory is shared with the egress rules store, whose own temp
// files are its business.
func removeStaleFirewallTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		ours := strings.HasPrefix(n, "."+FirewallCACertFile+tmpInfix) || strings.HasPrefix(n, "."+FirewallCAKeyFile+tmpInfix)
		if ours && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

func readFirewallCA(dir string, now time.Time) (*FirewallCA, error) {
	cert, key, certPEM, keyPEM, err := readPair(dir, FirewallCACertFile, FirewallCAKeyFile, true)
	if err != nil {
		return nil, err
	}
	if err := checkCA(cert, now); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, FirewallCACertFile), err)
	}
	if cert.Subject.CommonName != FirewallCACommonName {
		// The auth CA has the same file names: refuse it here, so a
		// mixed-up directory never lets the firewall mint with it.
		return nil, fmt.Errorf("%s: %w: CN %q, want %q", filepath.Join(dir, FirewallCACertFile), ErrWrongCert, cert.Subject.CommonName, FirewallCACommonName)
	}
	return &FirewallCA{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM, Fingerprint: CertFingerprint(cert)}, nil
}

func writeNewFirewallCA(dir string, now time.Time) (*FirewallCA, error) {
	cert, key, err := newFirewallCA(now)
	if err != nil {
		return nil, fmt.Errorf("certs: generate firewall CA: %w", err)
	}
	if err := writePair(dir, FirewallCAKeyFile, FirewallCACertFile, cert, key); err != nil {
		return nil, fmt.Errorf("certs: firewall CA: %w", err)
	}
	if err := giveToDirOwner(dir, FirewallCAKeyFile, FirewallCACertFile); err != nil {
		return nil, fmt.Errorf("certs: firewall CA: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &FirewallCA{Cert: cert, Key: key, CertPEM: encodeCert(cert.Raw), KeyPEM: keyPEM, Fingerprint: CertFingerprint(cert)}, nil
}

func newFirewallCA(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: FirewallCACommonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		// Server auth only: whatever the proxy presents is a web server,
		// never a client identity.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

// randomSerial gives every firewall CA and leaf its own serial: clients
// (Firefox, NSS) refuse two different certificates from one issuer that
// share a serial, which a rotate would otherwise produce.
func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// MintInspectionLeaf makes the certificate the egress proxy presents to an
// agent for host: a fresh P-256 key, SAN host (a DNS name), server auth,
// valid from now-1m to now+24h (never past the CA). The returned
// certificate carries the chain leaf, CA, and its Leaf field is set.
func MintInspectionLeaf(ca *FirewallCA, host string, now time.Time) (*tls.Certificate, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("certs: mint inspection leaf: no firewall CA")
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "" {
		return nil, errors.New("certs: mint inspection leaf: empty host name")
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(inspectionLeafValidity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             now.Add(-inspectionLeafSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{host},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: mint inspection leaf for %q: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, ca.Cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}
