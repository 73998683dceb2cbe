package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/testkit"
)

func newFirewallDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "clawker", "firewall")
}

func mustEnsureFirewallCA(t *testing.T, dir string) (*FirewallCA, bool) {
	t.Helper()
	ca, created, err := EnsureFirewallCA(dir)
	if err != nil {
		t.Fatalf("EnsureFirewallCA: %v", err)
	}
	return ca, created
}

func mustMint(t *testing.T, ca *FirewallCA, host string, now time.Time) *tls.Certificate {
	t.Helper()
	c, err := MintInspectionLeaf(ca, host, now)
	if err != nil {
		t.Fatalf("MintInspectionLeaf(%q): %v", host, err)
	}
	return c
}

func poolOf(cas ...*FirewallCA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AppendCertsFromPEM(ca.CertPEM)
	}
	return p
}

func verifyFor(leaf *tls.Certificate, roots *x509.CertPool, host string, now time.Time) error {
	_, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

// inspectHandshake runs a real TLS connection (handshake_test.go's): the
// server presents leaf, the client trusts roots and asks for serverName.
func inspectHandshake(t *testing.T, leaf *tls.Certificate, roots *x509.CertPool, serverName string) error {
	t.Helper()
	r := handshake(t, &tls.Config{Certificates: []tls.Certificate{*leaf}}, &tls.Config{RootCAs: roots, ServerName: serverName})
	return r.clientErr
}

func TestFirewallCAMadeOnFirstNeed(t *testing.T) {
	dir := newFirewallDir(t)
	if _, err := LoadFirewallCA(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load before Ensure: %v, want fs.ErrNotExist", err)
	}
	ca, created := mustEnsureFirewallCA(t, dir)
	if !created {
		t.Error("first Ensure: created=false")
	}
	certPath, keyPath := FirewallCAPaths(dir)
	for path, want := range map[string]os.FileMode{certPath: 0o644, keyPath: 0o600, dir: 0o700} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode %v, want %v", path, got, want)
		}
	}
	if ca.Cert.Subject.CommonName != FirewallCACommonName || !ca.Cert.IsCA {
		t.Errorf("CA subject %q IsCA %v", ca.Cert.Subject.CommonName, ca.Cert.IsCA)
	}
	if d := ca.Cert.NotAfter.Sub(time.Now()); d < 9*365*24*time.Hour {
		t.Errorf("CA valid for %v only", d)
	}
	if len(ca.Fingerprint) != 64 || ca.Fingerprint != CertFingerprint(ca.Cert) {
		t.Errorf("fingerprint %q", ca.Fingerprint)
	}
	onDisk, _ := os.ReadFile(certPath)
	if !bytes.Equal(onDisk, ca.CertPEM) {
		t.Error("CertPEM differs from ca.crt")
	}
	if bytes.Contains(ca.CertPEM, []byte("PRIVATE KEY")) || !bytes.Contains(ca.KeyPEM, []byte("PRIVATE KEY")) {
		t.Error("CertPEM/KeyPEM mixed up")
	}

	again, created := mustEnsureFirewallCA(t, dir)
	if created || again.Fingerprint != ca.Fingerprint {
		t.Errorf("second Ensure: created=%v fingerprint %s, want the first %s", created, again.Fingerprint, ca.Fingerprint)
	}
	loaded, err := LoadFirewallCA(dir)
	if err != nil || loaded.Fingerprint != ca.Fingerprint || !bytes.Equal(loaded.KeyPEM, ca.KeyPEM) {
		t.Fatalf("Load: %v (fingerprint %v)", err, loaded)
	}
}

func TestMintInspectionLeaf(t *testing.T) {
	ca, _ := mustEnsureFirewallCA(t, newFirewallDir(t))
	now := time.Now()
	leaf := mustMint(t, ca, "API.Example.com.", now)
	if len(leaf.Certificate) != 2 || !bytes.Equal(leaf.Certificate[1], ca.Cert.Raw) {
		t.Fatalf("chain has %d certs, want leaf + CA", len(leaf.Certificate))
	}
	l := leaf.Leaf
	if got := l.DNSNames; len(got) != 1 || got[0] != "api.example.com" {
		t.Errorf("SAN %v", got)
	}
	if !l.NotBefore.Equal(now.Add(-time.Minute).Truncate(time.Second)) || !l.NotAfter.Equal(now.Add(24*time.Hour).Truncate(time.Second)) {
		t.Errorf("validity %v .. %v, want now-1m .. now+24h (now %v)", l.NotBefore, l.NotAfter, now)
	}
	if len(l.ExtKeyUsage) != 1 || l.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || l.IsCA {
		t.Errorf("EKU %v IsCA %v", l.ExtKeyUsage, l.IsCA)
	}
	roots := poolOf(ca)
	if err := verifyFor(leaf, roots, "api.example.com", now); err != nil {
		t.Errorf("verify for its host: %v", err)
	}
	if err := verifyFor(leaf, roots, "other.example.com", now); err == nil {
		t.Error("leaf verified for another host")
	}
	if err := verifyFor(leaf, roots, "api.example.com", now.Add(25*time.Hour)); err == nil {
		t.Error("leaf verified after 24h")
	}
	// The leaf's key is only usable through the CA: a client usage leaf
	// would be refused by a server verifying clients.
	if _, err := l.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("inspection leaf verified for client auth")
	}
	if err := inspectHandshake(t, leaf, roots, "api.example.com"); err != nil {
		t.Errorf("TLS handshake for its host: %v", err)
	}
	if err := inspectHandshake(t, leaf, roots, "other.example.com"); err == nil {
		t.Error("TLS handshake for another host succeeded")
	}
	if _, err := MintInspectionLeaf(ca, "", now); err == nil {
		t.Error("minted a leaf for an empty host")
	}
	if _, err := MintInspectionLeaf(nil, "a.example", now); err == nil {
		t.Error("minted a leaf without a CA")
	}
	a, b := mustMint(t, ca, "api.example.com", now), mustMint(t, ca, "api.example.com", now)
	if a.Leaf.SerialNumber.Cmp(b.Leaf.SerialNumber) == 0 {
		t.Error("two leaves share a serial")
	}
}

func TestRotateFirewallCA(t *testing.T) {
	dir := newFirewallDir(t)
	first, _ := mustEnsureFirewallCA(t, dir)
	now := time.Now()
	oldLeaf := mustMint(t, first, "api.example.com", now)

	old, cur, err := RotateFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if old == nil || old.Fingerprint != first.Fingerprint {
		t.Fatalf("old %v, want the first CA", old)
	}
	if cur.Fingerprint == old.Fingerprint || cur.Cert.SerialNumber.Cmp(old.Cert.SerialNumber) == 0 {
		t.Fatal("rotate kept the CA (or its serial)")
	}
	loaded, err := LoadFirewallCA(dir)
	if err != nil || loaded.Fingerprint != cur.Fingerprint {
		t.Fatalf("Load after rotate: %v", err)
	}
	newLeaf := mustMint(t, loaded, "api.example.com", now)
	if err := verifyFor(newLeaf, poolOf(cur), "api.example.com", now); err != nil {
		t.Errorf("new leaf against the new CA: %v", err)
	}
	if err := verifyFor(newLeaf, poolOf(old), "api.example.com", now); err == nil {
		t.Error("new leaf verified against the old CA")
	}
	if err := verifyFor(oldLeaf, poolOf(cur), "api.example.com", now); err == nil {
		t.Error("old leaf verified against the new CA")
	}
	if err := inspectHandshake(t, newLeaf, poolOf(old), "api.example.com"); err == nil {
		t.Error("an agent trusting only the old CA accepted a new leaf")
	}

	// Rotating a directory with no CA makes one and reports no old one.
	old, cur, err = RotateFirewallCA(newFirewallDir(t))
	if err != nil || old != nil || cur == nil {
		t.Fatalf("rotate of nothing: old %v cur %v err %v", old, cur, err)
	}
}

func TestEnsureFirewallCAConcurrentGoroutines(t *testing.T) {
	dir := newFirewallDir(t)
	const n = 8
	var wg sync.WaitGroup
	fps := make([]string, n)
	made := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ca, created, err := EnsureFirewallCA(dir)
			if err == nil {
				fps[i], made[i] = ca.Fingerprint, created
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	creators := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Ensure %d: %v", i, errs[i])
		}
		if fps[i] != fps[0] {
			t.Errorf("Ensure %d got CA %s, Ensure 0 got %s", i, fps[i], fps[0])
		}
		if made[i] {
			creators++
		}
	}
	if creators != 1 {
		t.Errorf("%d callers made a CA, want 1", creators)
	}
}

// The child side of TestEnsureFirewallCAConcurrentProcesses: it ensures the
// CA in the directory its parent names and prints what it got.
func TestFirewallCAEnsureChild(t *testing.T) {
	dir := os.Getenv("CLAWKER_TEST_FIREWALL_CA_DIR")
	if dir == "" {
		return // only meaningful as the child of TestEnsureFirewallCAConcurrentProcesses
	}
	// Wait for the parent's go signal so the children really race.
	if _, err := io.ReadAll(os.Stdin); err != nil {
		t.Fatal(err)
	}
	ca, created, err := EnsureFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("FWCA %s %v\n", ca.Fingerprint, created)
}

func TestEnsureFirewallCAConcurrentProcesses(t *testing.T) {
	dir := newFirewallDir(t)
	const n = 4
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   bytes.Buffer
	}
	kids := make([]*child, n)
	for i := range kids {
		c := &child{cmd: exec.Command(os.Args[0], "-test.run=^TestFirewallCAEnsureChild$", "-test.v")}
		c.cmd.Env = append(os.Environ(), "CLAWKER_TEST_FIREWALL_CA_DIR="+dir)
		c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
		var err error
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kids[i] = c
	}
	for _, c := range kids {
		c.stdin.Close() // go
	}
	fps := map[string]bool{}
	creators := 0
	for i, c := range kids {
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, c.out.String())
		}
		var fp string
		var created bool
		found := false
		for _, line := range strings.Split(c.out.String(), "\n") {
			if _, err := fmt.Sscanf(line, "FWCA %s %t", &fp, &created); err == nil {
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("child %d printed no CA:\n%s", i, c.out.String())
		}
		fps[fp] = true
		if created {
			creators++
		}
	}
	if len(fps) != 1 || creators != 1 {
		t.Errorf("%d processes saw %d CAs, %d made one; want 1 and 1", n, len(fps), creators)
	}
	if loaded, err := LoadFirewallCA(dir); err != nil || !fps[loaded.Fingerprint] {
		t.Errorf("Load after the race: %v", err)
	}
}

// A rotate whose cert write fails right before its rename leaves the old
// ca.crt whole (never a partial file), and the next Ensure repairs the
// key/cert mismatch the crash left.
func TestFirewallCANeverHalfWritten(t *testing.T) {
	dir := newFirewallDir(t)
	first, _ := mustEnsureFirewallCA(t, dir)
	certPath, keyPath := FirewallCAPaths(dir)

	boom := errors.New("crash")
	testHookBeforeRename = func(tmp string) error {
		// The temp file is complete; the target is still the old one.
		if strings.Contains(tmp, FirewallCACertFile) {
			if cur, _ := os.ReadFile(certPath); !bytes.Equal(cur, first.CertPEM) {
				t.Error("ca.crt changed before its rename")
			}
			return boom
		}
		return nil
	}
	t.Cleanup(func() { testHookBeforeRename = nil })
	if _, _, err := RotateFirewallCA(dir); !errors.Is(err, boom) {
		t.Fatalf("rotate: %v, want the injected crash", err)
	}
	testHookBeforeRename = nil
	if cur, _ := os.ReadFile(certPath); !bytes.Equal(cur, first.CertPEM) {
		t.Error("ca.crt is not the old certificate after the failed rotate")
	}
	if key, _ := os.ReadFile(keyPath); bytes.Equal(key, first.KeyPEM) {
		t.Fatal("test premise: the key should have been replaced first")
	}
	assertNoTemps(t, dir)
	if _, err := LoadFirewallCA(dir); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Load after the crash: %v, want ErrKeyMismatch", err)
	}
	repaired, created := mustEnsureFirewallCA(t, dir)
	if !created || repaired.Fingerprint == first.Fingerprint {
		t.Errorf("Ensure after the crash: created=%v", created)
	}
	if _, err := LoadFirewallCA(dir); err != nil {
		t.Fatalf("Load after repair: %v", err)
	}

	// Readers racing rotations always see a whole, matching pair.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var readErr error
	var mu sync.Mutex
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := LoadFirewallCA(dir); err != nil {
					mu.Lock()
					readErr = err
					mu.Unlock()
					return
				}
			}
		}()
	}
	for range 10 {
		if _, _, err := RotateFirewallCA(dir); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if readErr != nil {
		t.Errorf("a Load during rotations failed: %v", readErr)
	}
}

func TestFirewallCARefusesOtherFiles(t *testing.T) {
	// The auth CA uses the same file names; it must not pass for the
	// firewall CA.
	authDir, _ := newAuth(t)
	if _, err := LoadFirewallCA(authDir); !errors.Is(err, ErrWrongCert) {
		t.Errorf("Load of the auth CA: %v, want ErrWrongCert", err)
	}
	dir := newFirewallDir(t)
	mustEnsureFirewallCA(t, dir)
	_, keyPath := FirewallCAPaths(dir)
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFirewallCA(dir); !errors.Is(err, ErrKeyExposed) {
		t.Errorf("Load with a readable key: %v, want ErrKeyExposed", err)
	}
	// Stale temp files of ours are swept; the rules store's are left alone.
	os.Chmod(keyPath, 0o600)
	ours := filepath.Join(dir, "."+FirewallCAKeyFile+tmpInfix+"1")
	theirs := filepath.Join(dir, ".egress-rules.yaml"+tmpInfix+"1")
	os.WriteFile(ours, []byte("half"), 0o600)
	os.WriteFile(theirs, []byte("half"), 0o600)
	mustEnsureFirewallCA(t, dir)
	if _, err := os.Stat(ours); !errors.Is(err, fs.ErrNotExist) {
		t.Error("our stale temp file was not swept")
	}
	if _, err := os.Stat(theirs); err != nil {
		t.Error("another store's temp file was removed")
	}
}

// A CP running as root in its container makes the CA in the host user's
// directory: the files (and the lock) go to the directory's owner, so that
// user's `clawker run` can still lock and read them; and a user who cannot
// read the CA is told so instead of having it replaced.
func TestFirewallCAFilesBelongToTheDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "chown needs root")
	}
	// t.TempDir's parents are 0700 root: the other user could not reach
	// them. This one is traversable, and holds a copy of the test binary.
	base, err := os.MkdirTemp("", "clawker-test-fwca-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "certs.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "firewall")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 65534, 65534
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	ca, _ := mustEnsureFirewallCA(t, dir)
	for _, n := range []string{FirewallCACertFile, FirewallCAKeyFile, lockName} {
		u, g, ok := fileOwner(filepath.Join(dir, n))
		if !ok || u != uid || g != gid {
			t.Errorf("%s owned by %d:%d, want the dir's %d:%d", n, u, g, uid, gid)
		}
	}

	// As that user (a child process), Ensure finds the same CA.
	cmd := exec.Command(bin, "-test.run=^TestFirewallCAEnsureChild$", "-test.v")
	cmd.Env = append(os.Environ(), "CLAWKER_TEST_FIREWALL_CA_DIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "FWCA "+ca.Fingerprint+" false") {
		t.Fatalf("Ensure as the dir's owner: %v\n%s", err, out)
	}

	// Files the user cannot read are refused, not replaced.
	if err := os.Chown(filepath.Join(dir, FirewallCAKeyFile), 0, 0); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, "-test.run=^TestFirewallCAEnsureChild$", "-test.v")
	cmd.Env = append(os.Environ(), "CLAWKER_TEST_FIREWALL_CA_DIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, _ = cmd.CombinedOutput()
	if !strings.Contains(string(out), "permission denied") || !strings.Contains(string(out), "chown") {
		t.Errorf("Ensure of an unreadable key:\n%s", out)
	}
	if cur, err := LoadFirewallCA(dir); err != nil || cur.Fingerprint != ca.Fingerprint {
		t.Errorf("the CA was replaced: %v", err)
	}
}
