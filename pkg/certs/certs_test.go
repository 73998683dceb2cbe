package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustEnsure(t *testing.T, dir string, opts Options) []Item {
	t.Helper()
	items, err := Ensure(dir, opts)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return items
}

func mustLoad(t *testing.T, dir string) *Material {
	t.Helper()
	m, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return m
}

func newAuth(t *testing.T) (string, *Material) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "clawker", "auth")
	mustEnsure(t, dir, Options{})
	return dir, mustLoad(t, dir)
}

func created(items []Item) map[string]bool {
	out := map[string]bool{}
	for _, it := range items {
		out[it.Name] = it.Created
	}
	return out
}

func itemByName(t *testing.T, items []Item, name string) Item {
	t.Helper()
	for _, it := range items {
		if it.Name == name {
			return it
		}
	}
	t.Fatalf("no item %q in %+v", name, items)
	return Item{}
}

func TestEnsureCreatesAllWithModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "clawker", "auth")
	items := mustEnsure(t, dir, Options{})

	var names []string
	for _, it := range items {
		names = append(names, it.Name)
		if !it.Created || !errors.Is(it.Err, fs.ErrNotExist) {
			t.Errorf("%s: Created=%v Err=%v, want created because missing", it.Name, it.Created, it.Err)
		}
		if it.Name != GroupSigning && it.NotAfter.IsZero() {
			t.Errorf("%s: zero NotAfter", it.Name)
		}
	}
	if got := strings.Join(names, ","); got != "ca,server,cli,signing" {
		t.Fatalf("items %s", got)
	}

	want := map[string]os.FileMode{
		CACertFile: 0o644, CAKeyFile: 0o600,
		ServerCertFile: 0o644, ServerKeyFile: 0o600,
		CLICertFile: 0o644, CLIKeyFile: 0o600,
		SigningKeyFile: 0o600, SigningJWKSFile: 0o644,
		NetloggerCertFile: 0o644, NetloggerKeyFile: 0o600,
		lockName: 0o600,
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Errorf("dir has %d entries, want %d: %v", len(entries), len(want), entries)
	}
	for name, mode := range want {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, fi.Mode().Perm())
		}
	}

	again := mustEnsure(t, dir, Options{})
	for i, it := range again {
		if it.Created || it.Err != nil {
			t.Errorf("second Ensure: %s Created=%v Err=%v", it.Name, it.Created, it.Err)
		}
		if !it.NotAfter.Equal(items[i].NotAfter) {
			t.Errorf("second Ensure: %s NotAfter changed", it.Name)
		}
	}

	m := mustLoad(t, dir)
	if m.CA.Subject.CommonName != CACommonName || !m.CA.IsCA || m.CA.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA: %+v", m.CA.Subject)
	}
	if d := m.CA.NotAfter.Sub(m.CA.NotBefore); d < 9*365*24*time.Hour {
		t.Errorf("CA lifetime %v", d)
	}
	if m.Server.Subject.CommonName != ServerCommonName || m.CLI.Subject.CommonName != CLICommonName {
		t.Errorf("leaf CNs %q %q", m.Server.Subject.CommonName, m.CLI.Subject.CommonName)
	}
	for _, h := range []string{"localhost", ServerCommonName, "127.0.0.1"} {
		if err := m.Server.VerifyHostname(h); err != nil {
			t.Errorf("server cert: %v", err)
		}
	}
}

func TestRotateReplacesEverything(t *testing.T) {
	dir, before := newAuth(t)
	items, err := Rotate(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if !it.Created || it.Err != nil {
			t.Errorf("%s: Created=%v Err=%v", it.Name, it.Created, it.Err)
		}
	}
	after := mustLoad(t, dir)
	pairs := map[string][2]*x509.Certificate{"ca": {before.CA, after.CA}, "server": {before.Server, after.Server}, "cli": {before.CLI, after.CLI}}
	for name, p := range pairs {
		if p[0].SerialNumber.Cmp(p[1].SerialNumber) == 0 || bytes.Equal(p[0].Raw, p[1].Raw) {
			t.Errorf("%s not replaced", name)
		}
	}
	if after.Server.CheckSignatureFrom(before.CA) == nil {
		t.Error("new server cert still chains to the old CA")
	}
	if before.SigningJWK.Keys[0].Kid == after.SigningJWK.Keys[0].Kid {
		t.Error("signing key not replaced")
	}
}

func TestEnsureRepairsOnlyBrokenGroup(t *testing.T) {
	t.Run("missing key", func(t *testing.T) {
		dir, _ := newAuth(t)
		os.Remove(filepath.Join(dir, CLIKeyFile))
		items := mustEnsure(t, dir, Options{})
		if c := created(items); c["ca"] || c["server"] || !c["cli"] || c["signing"] {
			t.Errorf("created %v", c)
		}
		if it := itemByName(t, items, GroupCLI); !errors.Is(it.Err, fs.ErrNotExist) {
			t.Errorf("cli Err %v", it.Err)
		}
	})
	t.Run("key does not match cert", func(t *testing.T) {
		// What a crash between writing server.key and server.crt leaves.
		dir, _ := newAuth(t)
		k, _ := newKey()
		pemKey, _ := encodeKey(k)
		if err := os.WriteFile(filepath.Join(dir, ServerKeyFile), pemKey, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(dir)
		if !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), ServerKeyFile) || !strings.Contains(err.Error(), "clawker auth rotate") {
			t.Errorf("Load: %v", err)
		}
		items := mustEnsure(t, dir, Options{})
		if c := created(items); c["ca"] || !c["server"] || c["cli"] || c["signing"] {
			t.Errorf("created %v", c)
		}
		if it := itemByName(t, items, GroupServer); !errors.Is(it.Err, ErrKeyMismatch) {
			t.Errorf("server Err %v", it.Err)
		}
		mustLoad(t, dir)
	})
	t.Run("broken CA reissues every leaf", func(t *testing.T) {
		dir, before := newAuth(t)
		os.WriteFile(filepath.Join(dir, CACertFile), []byte("garbage"), 0o644)
		items := mustEnsure(t, dir, Options{})
		if c := created(items); !c["ca"] || !c["server"] || !c["cli"] || c["signing"] {
			t.Errorf("created %v", c)
		}
		if it := itemByName(t, items, GroupServer); !errors.Is(it.Err, ErrCAReplaced) {
			t.Errorf("server Err %v", it.Err)
		}
		after := mustLoad(t, dir)
		if bytes.Equal(after.CA.Raw, before.CA.Raw) {
			t.Error("CA not replaced")
		}
	})
	t.Run("expired leaves", func(t *testing.T) {
		dir := t.TempDir()
		past := time.Now().AddDate(-2, 0, 0)
		mustEnsure(t, dir, Options{Now: func() time.Time { return past }})
		_, err := Load(dir)
		if !errors.Is(err, ErrExpired) {
			t.Errorf("Load: %v", err)
		}
		items := mustEnsure(t, dir, Options{})
		if c := created(items); c["ca"] || !c["server"] || !c["cli"] || c["signing"] {
			t.Errorf("created %v", c)
		}
		if it := itemByName(t, items, GroupCLI); !errors.Is(it.Err, ErrExpired) || it.NotAfter.Before(time.Now()) {
			t.Errorf("cli %+v", it)
		}
	})
	t.Run("exposed key", func(t *testing.T) {
		dir, _ := newAuth(t)
		os.Chmod(filepath.Join(dir, SigningKeyFile), 0o644)
		items := mustEnsure(t, dir, Options{})
		if c := created(items); c["ca"] || c["server"] || c["cli"] || !c["signing"] {
			t.Errorf("created %v", c)
		}
		if it := itemByName(t, items, GroupSigning); !errors.Is(it.Err, ErrKeyExposed) {
			t.Errorf("signing Err %v", it.Err)
		}
	})
	t.Run("new server IP", func(t *testing.T) {
		dir, _ := newAuth(t)
		ip := net.ParseIP("172.30.0.2")
		items := mustEnsure(t, dir, Options{ServerIPs: []net.IP{ip}})
		if c := created(items); c["ca"] || !c["server"] || c["cli"] || c["signing"] {
			t.Errorf("created %v", c)
		}
		if err := mustLoad(t, dir).Server.VerifyHostname(ip.String()); err != nil {
			t.Error(err)
		}
		if c := created(mustEnsure(t, dir, Options{ServerIPs: []net.IP{ip}})); c["server"] {
			t.Error("server reissued although it covers the IP")
		}
	})
}

func TestAtomicWriteFailureKeepsOldFile(t *testing.T) {
	dir, _ := newAuth(t)
	path := filepath.Join(dir, CACertFile)
	old, _ := os.ReadFile(path)

	boom := errors.New("injected")
	var seen []string
	testHookBeforeRename = func(tmp string) error {
		seen = append(seen, tmp)
		if data, _ := os.ReadFile(tmp); len(data) == 0 {
			t.Error("hook ran before the temp file was written")
		}
		return boom
	}
	t.Cleanup(func() { testHookBeforeRename = nil })

	if err := writeFileAtomic(path, []byte("new"), certMode); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if _, err := Rotate(dir, Options{}); !errors.Is(err, boom) {
		t.Fatalf("Rotate err %v", err)
	}
	if cur, _ := os.ReadFile(path); !bytes.Equal(cur, old) {
		t.Error("target changed")
	}
	for _, tmp := range seen {
		if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("temp file %s left behind", tmp)
		}
	}
	assertNoTemps(t, dir)
	mustLoad(t, dir) // the failed Rotate left the previous material usable
}

func TestCrashBetweenKeyAndCertIsRepaired(t *testing.T) {
	dir, _ := newAuth(t)
	// Let ca.key through, then "crash" before ca.crt is renamed.
	n := 0
	testHookBeforeRename = func(string) error {
		if n++; n > 1 {
			return errors.New("crash")
		}
		return nil
	}
	t.Cleanup(func() { testHookBeforeRename = nil })
	if _, err := Rotate(dir, Options{}); err == nil {
		t.Fatal("Rotate succeeded")
	}
	testHookBeforeRename = nil
	if _, err := Load(dir); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Load after crash: %v", err)
	}
	if c := created(mustEnsure(t, dir, Options{})); !c["ca"] || !c["server"] || !c["cli"] {
		t.Errorf("created %v", c)
	}
	mustLoad(t, dir)
}

func TestAtomicWriteReadOnlyDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	os.WriteFile(path, []byte("old"), 0o644)
	os.Chmod(dir, 0o500)
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	if err := writeFileAtomic(path, []byte("new"), certMode); err == nil {
		t.Fatal("write succeeded in a read-only dir")
	}
	if cur, _ := os.ReadFile(path); string(cur) != "old" {
		t.Errorf("target is %q", cur)
	}
	assertNoTemps(t, dir)
}

func TestEnsureSweepsStaleTemps(t *testing.T) {
	dir, _ := newAuth(t)
	stale := filepath.Join(dir, "."+CAKeyFile+tmpInfix+"123")
	os.WriteFile(stale, []byte("half"), 0o600)
	mustEnsure(t, dir, Options{})
	assertNoTemps(t, dir)
}

func assertNoTemps(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), tmpInfix) {
			t.Errorf("temp file %s left behind", e.Name())
		}
	}
}

func TestJWK(t *testing.T) {
	dir, m := newAuth(t)
	raw, err := os.ReadFile(filepath.Join(dir, SigningJWKSFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || len(doc.Keys) != 1 {
		t.Fatalf("jwks %s: %v", raw, err)
	}
	k := doc.Keys[0]
	for field, want := range map[string]string{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig"} {
		if k[field] != want {
			t.Errorf("%s = %q, want %q", field, k[field], want)
		}
	}
	if strings.ContainsAny(k["x"]+k["y"]+k["kid"], "=+/") {
		t.Error("not unpadded base64url")
	}
	x, _ := base64.RawURLEncoding.DecodeString(k["x"])
	y, _ := base64.RawURLEncoding.DecodeString(k["y"])
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil || !pub.Equal(&m.SigningKey.PublicKey) {
		t.Fatalf("x/y do not decode to the signing key: %v", err)
	}

	// RFC 7638, computed independently: json.Marshal sorts map keys and
	// adds no whitespace, which is exactly the canonical form.
	canon, _ := json.Marshal(map[string]string{"crv": k["crv"], "kty": k["kty"], "x": k["x"], "y": k["y"]})
	sum := sha256.Sum256(canon)
	if want := base64.RawURLEncoding.EncodeToString(sum[:]); k["kid"] != want {
		t.Errorf("kid %s, want %s", k["kid"], want)
	}
	j1, _ := NewJWK(&m.SigningKey.PublicKey)
	j2, _ := NewJWK(pub)
	if j1.Kid != k["kid"] || j2.Kid != k["kid"] {
		t.Error("kid not stable")
	}
	mustEnsure(t, dir, Options{})
	if again, _ := os.ReadFile(filepath.Join(dir, SigningJWKSFile)); !bytes.Equal(again, raw) {
		t.Error("Ensure rewrote a valid JWKS")
	}

	// The published key verifies what the private key signs (ES256).
	digest := sha256.Sum256([]byte("client assertion"))
	sig, _ := ecdsa.SignASN1(rand.Reader, m.SigningKey, digest[:])
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Error("signature does not verify with the JWK")
	}

	tampered := j1
	tampered.Kid = "other"
	if _, err := tampered.PublicKey(); err == nil {
		t.Error("JWK with a wrong kid accepted")
	}
}

func TestMintAgentCertValidation(t *testing.T) {
	_, m := newAuth(t)
	good := AgentIdentity{Project: "my.site", Agent: "dev_1-a", ContainerID: strings.Repeat("ab", 32)}
	cases := []struct {
		name  string
		edit  func(*AgentIdentity)
		field string
	}{
		{"empty project", func(id *AgentIdentity) { id.Project = "" }, FieldProject},
		{"upper project", func(id *AgentIdentity) { id.Project = "Site" }, FieldProject},
		{"leading dash", func(id *AgentIdentity) { id.Project = "-x" }, FieldProject},
		{"long project", func(id *AgentIdentity) { id.Project = strings.Repeat("a", 64) }, FieldProject},
		{"dot in agent", func(id *AgentIdentity) { id.Agent = "a.b" }, FieldAgent},
		{"slash in agent", func(id *AgentIdentity) { id.Agent = "a/b" }, FieldAgent},
		{"short id", func(id *AgentIdentity) { id.ContainerID = "abc123" }, FieldContainerID},
		{"upper id", func(id *AgentIdentity) { id.ContainerID = strings.Repeat("AB", 32) }, FieldContainerID},
	}
	for _, c := range cases {
		id := good
		c.edit(&id)
		_, _, err := m.MintAgentCert(id, time.Hour)
		var fe *InvalidFieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: err %v, want field %s", c.name, err, c.field)
		}
	}
	_, _, err := m.MintAgentCert(good, 0)
	var fe *InvalidFieldError
	if !errors.As(err, &fe) || fe.Field != FieldValidity {
		t.Errorf("zero validity: %v", err)
	}

	certPEM, _, err := m.MintAgentCert(good, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := parseCert(certPEM)
	got, err := ParseAgentIdentity(leaf)
	if err != nil || got != good {
		t.Errorf("round trip: %+v %v", got, err)
	}
	if d := leaf.NotAfter.Sub(time.Now()); d > 24*time.Hour || d < 23*time.Hour {
		t.Errorf("validity %v", d)
	}
	if len(Thumbprint(leaf)) != 64 {
		t.Error("thumbprint not hex SHA-256")
	}
}

// badAgentCert signs a cert the way a buggy minter might, straight with x509.
func badAgentCert(t *testing.T, m *Material, cn string, uris ...string) ([]byte, []byte, *x509.Certificate) {
	t.Helper()
	key, _ := newKey()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		NotBefore:   time.Now().Add(-time.Minute),
		NotAfter:    time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.CA, &key.PublicKey, m.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := encodeKey(key)
	leaf, _ := x509.ParseCertificate(der)
	return encodeCert(der), keyPEM, leaf
}

func TestParseAgentIdentityErrors(t *testing.T) {
	_, m := newAuth(t)
	agent := AgentURNPrefix + "proj.dev"
	ctr := ContainerURNPrefix + strings.Repeat("0", 64)
	cases := []struct {
		name string
		cn   string
		uris []string
		want error
	}{
		{"wrong CN", CLICommonName, []string{agent, ctr}, ErrNotAgentCert},
		{"no container SAN", AgentCommonName, []string{agent}, ErrMissingContainerSAN},
		{"no agent SAN", AgentCommonName, []string{ctr}, ErrMissingAgentSAN},
		{"two agents", AgentCommonName, []string{agent, agent, ctr}, ErrDuplicateSAN},
		{"foreign SAN", AgentCommonName, []string{agent, ctr, "https://example.com"}, ErrUnexpectedSAN},
		{"no dot", AgentCommonName, []string{AgentURNPrefix + "proj", ctr}, ErrMalformedSAN},
		{"bad id", AgentCommonName, []string{agent, ContainerURNPrefix + "abc"}, ErrMalformedSAN},
	}
	for _, c := range cases {
		_, _, leaf := badAgentCert(t, m, c.cn, c.uris...)
		if _, err := ParseAgentIdentity(leaf); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
}

func TestServerBundle(t *testing.T) {
	_, m := newAuth(t)
	b := m.ServerBundle()
	var names []string
	for n := range b {
		names = append(names, n)
	}
	if len(b) != 4 || b[CACertFile] == nil || b[ServerCertFile] == nil || b[ServerKeyFile] == nil || b[SigningJWKSFile] == nil {
		t.Fatalf("bundle has %v", names)
	}
	for _, secret := range []string{CAKeyFile, CLIKeyFile, SigningKeyFile} {
		for name, data := range b {
			if bytes.Contains(data, bytes.TrimSpace(m.files[secret])) {
				t.Errorf("%s leaks into bundle file %s", secret, name)
			}
		}
	}

	bdir := filepath.Join(t.TempDir(), "bundle")
	if err := m.WriteServerBundle(bdir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(bdir, ServerKeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("bundle server.key mode %v", fi.Mode().Perm())
	}
	cp, err := LoadServerBundle(bdir)
	if err != nil {
		t.Fatal(err)
	}
	if cp.CAKey != nil || cp.CLIKey != nil || cp.SigningKey != nil {
		t.Error("bundle material holds host-only keys")
	}
	if _, _, err := cp.MintAgentCert(AgentIdentity{"p", "a", strings.Repeat("0", 64)}, time.Hour); !errors.Is(err, ErrNoKey) {
		t.Errorf("mint from bundle: %v", err)
	}
	srv, _ := cp.ServerTLSConfig(CLICommonName)
	cli, _ := m.CLIClientTLSConfig("")
	if r := handshake(t, srv, cli); r.serverErr != nil || r.clientErr != nil {
		t.Errorf("handshake with bundle: %+v", r)
	}
}
