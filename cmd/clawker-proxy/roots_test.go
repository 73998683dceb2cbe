package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testCAPEM(t *testing.T, cn string) (string, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), cert
}

func TestUpstreamRoots(t *testing.T) {
	var logged bytes.Buffer
	log.SetOutput(&logged)
	defer log.SetOutput(os.Stderr)
	sysPEM, sys := testCAPEM(t, "system root")
	extraPEM, extra := testCAPEM(t, "upstream_ca root")
	file := filepath.Join(t.TempDir(), "ca-certificates.crt")
	os.WriteFile(file, []byte(sysPEM), 0o644)

	pool, err := upstreamRoots(file, extraPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*x509.Certificate{sys, extra} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
			t.Errorf("%s not in the pool: %v", c.Subject.CommonName, err)
		}
	}
	// No roots file: upstream_ca alone, and the log says so.
	pool, err = upstreamRoots(filepath.Join(t.TempDir(), "absent"), extraPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sys.Verify(x509.VerifyOptions{Roots: pool}); err == nil {
		t.Error("a root of the missing file verified")
	}
	if _, err := extra.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("upstream_ca root: %v", err)
	}
	if !strings.Contains(logged.String(), "no system roots") || !strings.Contains(logged.String(), "firewall.upstream_ca alone") {
		t.Errorf("log %q", logged.String())
	}
	if _, err := upstreamRoots(file, "not pem"); err == nil || !strings.Contains(err.Error(), "firewall.upstream_ca") {
		t.Errorf("bad upstream_ca: %v", err)
	}
}
