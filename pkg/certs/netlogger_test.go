package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNetloggerCertIssuedAndBundled(t *testing.T) {
	_, m := newAuth(t)
	if m.Netlogger == nil || m.Netlogger.Subject.CommonName != NetloggerCommonName {
		t.Fatalf("netlogger cert %v", m.Netlogger)
	}
	if err := verifyLeaf(m.Netlogger, m.CA, x509.ExtKeyUsageClientAuth, m.clock()); err != nil {
		t.Fatalf("netlogger cert does not verify as a client of the CA: %v", err)
	}
	if err := verifyLeaf(m.Netlogger, m.CA, x509.ExtKeyUsageServerAuth, m.clock()); err == nil {
		t.Fatal("netlogger cert is usable as a server cert")
	}
	bdir := filepath.Join(t.TempDir(), "bundle")
	if err := m.WriteServerBundle(bdir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(bdir, NetloggerKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bundle netlogger.key: %v %v", fi, err)
	}
	cp, err := LoadServerBundle(bdir)
	if err != nil || cp.NetloggerErr != nil || cp.Netlogger == nil {
		t.Fatalf("bundle: %v / %v", err, cp.NetloggerErr)
	}

	// A collector that admits clients of the clawker CA sees clawker-netlogger.
	roots := x509.NewCertPool()
	roots.AddCert(m.CA)
	cli, err := cp.NetloggerClientTLSConfig(roots, ServerCommonName)
	if err != nil {
		t.Fatal(err)
	}
	srv := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{m.Server.Raw}, PrivateKey: m.ServerKey}},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: roots,
	}
	r := handshake(t, srv, cli)
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("handshake: %+v", r)
	}
	if cn := r.serverState.PeerCertificates[0].Subject.CommonName; cn != NetloggerCommonName {
		t.Fatalf("collector saw CN %q", cn)
	}
}

func TestNetloggerCertUpgradeAndRepair(t *testing.T) {
	dir, m := newAuth(t)
	oldServer := m.Server.SerialNumber
	// Material from before the netlogger: Load still works, without it.
	for _, f := range []string{NetloggerCertFile, NetloggerKeyFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	old := mustLoad(t, dir)
	if old.Netlogger != nil {
		t.Fatal("netlogger cert from nowhere")
	}
	if _, err := old.NetloggerClientTLSConfig(nil, ""); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), rotateHint) {
		t.Fatalf("no netlogger pair: %v", err)
	}
	// A bundle written from it drops a stale pair.
	bdir := filepath.Join(t.TempDir(), "bundle")
	if err := m.WriteServerBundle(bdir); err != nil {
		t.Fatal(err)
	}
	if err := old.WriteServerBundle(bdir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bdir, NetloggerCertFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stale netlogger.crt left in the bundle: %v", err)
	}

	// Ensure completes the server group: the pair is issued with it.
	items := mustEnsure(t, dir, Options{})
	if it := itemByName(t, items, GroupServer); !it.Created || !errors.Is(it.Err, fs.ErrNotExist) {
		t.Fatalf("server item %+v", it)
	}
	if c := created(items); c[GroupCA] || c[GroupCLI] || c[GroupSigning] {
		t.Fatalf("created %v: only the server group should be", c)
	}
	m2 := mustLoad(t, dir)
	if m2.Netlogger == nil || m2.Server.SerialNumber.Cmp(oldServer) == 0 {
		t.Fatal("the server group was not reissued whole")
	}
	if c := created(mustEnsure(t, dir, Options{})); c[GroupServer] {
		t.Fatal("a complete server group was reissued")
	}

	// A netlogger key that does not match its cert: reissued, and said why.
	other := filepath.Join(dir, CLIKeyFile)
	data, _ := os.ReadFile(other)
	if err := os.WriteFile(filepath.Join(dir, NetloggerKeyFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Load with a bad netlogger pair: %v", err)
	}
	if it := itemByName(t, mustEnsure(t, dir, Options{}), GroupServer); !it.Created || !errors.Is(it.Err, ErrKeyMismatch) {
		t.Fatalf("server item %+v", it)
	}
}

func TestNetloggerBadPairInBundleIsNotFatal(t *testing.T) {
	_, m := newAuth(t)
	bdir := filepath.Join(t.TempDir(), "bundle")
	if err := m.WriteServerBundle(bdir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bdir, NetloggerCertFile), m.files[ServerCertFile], 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := LoadServerBundle(bdir)
	if err != nil {
		t.Fatalf("the CP's listeners must not depend on the netlogger pair: %v", err)
	}
	if cp.NetloggerErr == nil {
		t.Fatal("bad netlogger pair not reported")
	}
	if _, err := cp.NetloggerClientTLSConfig(nil, ""); err == nil || !strings.Contains(err.Error(), NetloggerCertFile) {
		t.Fatalf("config from a bad pair: %v", err)
	}
}
