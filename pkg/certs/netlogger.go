package certs

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The netlogger's client identity: the CP presents it to the OpenTelemetry
// collector it ships egress records to, so a collector can admit clawker's
// stream by the clawker CA alone. It belongs to the server group (the CP's
// own identities) and is issued, kept and replaced together with server.crt.
const (
	NetloggerCertFile   = "netlogger.crt"
	NetloggerKeyFile    = "netlogger.key"
	NetloggerCommonName = "clawker-netlogger"
)

func netloggerSpec() leafSpec {
	return leafSpec{cn: NetloggerCommonName, eku: x509.ExtKeyUsageClientAuth}
}

// companion is a pair issued and validated with a group's main leaf.
type companion struct {
	certFile, keyFile string
	spec              leafSpec
}

// serverCompanions are the CP identities beside server.crt.
var serverCompanions = []companion{{NetloggerCertFile, NetloggerKeyFile, netloggerSpec()}}

// checkCompanions validates each companion pair; the first problem is returned.
func checkCompanions(dir string, cs []companion, ca *x509.Certificate, now time.Time) error {
	for _, c := range cs {
		if _, _, _, _, err := readLeaf(dir, c.certFile, c.keyFile, ca, c.spec, now, true); err != nil {
			return err
		}
	}
	return nil
}

// issueCompanions issues and writes every companion pair.
func issueCompanions(dir string, cs []companion, ca *x509.Certificate, caKey *ecdsa.PrivateKey, now time.Time) error {
	for _, c := range cs {
		cert, key, err := issueLeaf(ca, caKey, c.spec, now, leafValidity)
		if err != nil {
			return fmt.Errorf("issue %s: %w", c.certFile, err)
		}
		if err := writePair(dir, c.keyFile, c.certFile, cert, key); err != nil {
			return err
		}
	}
	return nil
}

// loadNetlogger reads the optional netlogger pair into m. Absent, it is
// not an error (material from before the netlogger existed): the netlogger
// refuses to start without it and says to rotate. Present and wrong, it is.
func (m *Material) loadNetlogger(dir string, now time.Time, strictMode bool) error {
	cert, key, certPEM, keyPEM, err := readLeaf(dir, NetloggerCertFile, NetloggerKeyFile, m.CA, netloggerSpec(), now, strictMode)
	if errors.Is(err, fs.ErrNotExist) {
		if _, statErr := os.Stat(filepath.Join(dir, NetloggerKeyFile)); errors.Is(statErr, fs.ErrNotExist) {
			if _, statErr := os.Stat(filepath.Join(dir, NetloggerCertFile)); errors.Is(statErr, fs.ErrNotExist) {
				return nil
			}
		}
	}
	if err != nil {
		return err
	}
	m.Netlogger, m.NetloggerKey = cert, key
	m.files[NetloggerCertFile], m.files[NetloggerKeyFile] = certPEM, keyPEM
	return nil
}

// NetloggerClientTLSConfig is the netlogger's config for dialing the
// collector: it presents the clawker-netlogger certificate and verifies
// the collector against roots (nil: the system roots). TLS 1.2 is the
// floor, not 1.3 as between clawker's own parts: the collector is not
// ours and may be built on any TLS stack.
func (m *Material) NetloggerClientTLSConfig(roots *x509.CertPool, serverName string) (*tls.Config, error) {
	if m.NetloggerErr != nil {
		return nil, fmt.Errorf("certs: netlogger client certificate: %w; %s", m.NetloggerErr, rotateHint)
	}
	if m.Netlogger == nil || m.NetloggerKey == nil {
		return nil, fmt.Errorf("%w: netlogger cert and key (%s, %s in %s); %s", ErrNoKey, NetloggerCertFile, NetloggerKeyFile, m.Dir, rotateHint)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      roots,
		Certificates: []tls.Certificate{{Certificate: [][]byte{m.Netlogger.Raw}, PrivateKey: m.NetloggerKey, Leaf: m.Netlogger}},
		ServerName:   serverName,
	}, nil
}
