package clawkercli_test

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/certs"
)

// The CLI cannot inject a clock, and certs.Load validates against the real
// one, so golden files see dates through this same-width placeholder
// (alignment is therefore preserved); TestAuthRotateFirstRun checks the
// real dates separately.
var rfc3339Seconds = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`)

const datePlaceholder = "YYYY-MM-DDThh:mm:ssZ"

// authGolden renders both streams of an `auth rotate` run with the
// temporary data home and the dates replaced by placeholders.
func authGolden(h *adminclienttest.Home, r clawkerResult) string {
	norm := func(s string) string {
		s = strings.ReplaceAll(s, h.DataHome, "$XDG_DATA_HOME")
		return rfc3339Seconds.ReplaceAllString(s, datePlaceholder)
	}
	return "-- stdout --\n" + norm(r.stdout) + "-- stderr --\n" + norm(r.stderr)
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func sameFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// wantBundleMatches checks that the CP's bundle is exactly the server part
// of the CLI's current material.
func wantBundleMatches(t *testing.T, h *adminclienttest.Home) *certs.Material {
	t.Helper()
	p := h.Paths(t)
	m, err := certs.Load(p.AuthDir)
	if err != nil {
		t.Fatal(err)
	}
	got := readDir(t, p.CPAuthDir)
	// The netlogger's client pair travels with the bundle (outside
	// ServerBundle): it must be the host's copy.
	for _, name := range []string{certs.NetloggerCertFile, certs.NetloggerKeyFile} {
		host, err := os.ReadFile(filepath.Join(p.AuthDir, name))
		if err != nil || !bytes.Equal(got[name], host) {
			t.Errorf("bundle's %s differs from the auth material's (%v)", name, err)
		}
		delete(got, name)
	}
	if want := m.ServerBundle(); !sameFiles(got, want) {
		t.Errorf("bundle in %s holds %d files that differ from the auth material's server bundle", p.CPAuthDir, len(got))
	}
	return m
}

func TestAuthRotateFirstRun(t *testing.T) {
	h := adminclienttest.NewHome(t)
	start := time.Now()
	r := runClawkerIn(h, "auth", "rotate")
	wantExit(t, r, 0)
	checkGoldenFile(t, "auth_rotate_first.golden", authGolden(h, r))

	m := wantBundleMatches(t, h)
	for _, c := range []*expiryCase{{"ca", m.CA.NotAfter}, {"server", m.Server.NotAfter}, {"cli", m.CLI.NotAfter}} {
		if want := "expires " + c.notAfter.UTC().Format(time.RFC3339); !strings.Contains(lineOf(r.stdout, "✓ "+c.name+" "), want) {
			t.Errorf("%s line lacks %q:\n%s", c.name, want, r.stdout)
		}
	}
	if d := m.CA.NotAfter.Sub(start); d < 9*365*24*time.Hour {
		t.Errorf("CA valid for only %s", d)
	}
}

type expiryCase struct {
	name     string
	notAfter time.Time
}

func lineOf(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestAuthRotateKeepsValid(t *testing.T) {
	h := adminclienttest.NewHome(t)
	wantExit(t, runClawkerIn(h, "auth", "rotate"), 0)
	p := h.Paths(t)
	before := readDir(t, p.AuthDir)

	r := runClawkerIn(h, "auth", "rotate")
	wantExit(t, r, 0)
	checkGoldenFile(t, "auth_rotate_kept.golden", authGolden(h, r))
	if !sameFiles(before, readDir(t, p.AuthDir)) {
		t.Error("a run with valid material changed the auth directory")
	}
	wantBundleMatches(t, h)
}

func TestAuthRotateRewritesMissingBundle(t *testing.T) {
	h := adminclienttest.NewHome(t)
	wantExit(t, runClawkerIn(h, "auth", "rotate"), 0)
	if err := os.RemoveAll(h.Paths(t).CPAuthDir); err != nil {
		t.Fatal(err)
	}
	r := runClawkerIn(h, "auth", "rotate")
	wantExit(t, r, 0)
	if strings.Contains(r.stdout, "created") || r.stderr != "" {
		t.Errorf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	wantBundleMatches(t, h)
}

func TestAuthRotateForce(t *testing.T) {
	h := adminclienttest.NewHome(t)
	wantExit(t, runClawkerIn(h, "auth", "rotate"), 0)
	old := wantBundleMatches(t, h)

	r := runClawkerIn(h, "auth", "rotate", "--force")
	wantExit(t, r, 0)
	checkGoldenFile(t, "auth_rotate_force.golden", authGolden(h, r))
	m := wantBundleMatches(t, h)
	if m.CA.Equal(old.CA) || m.SigningKey.Equal(old.SigningKey) {
		t.Error("--force kept the CA or the signing key")
	}
}

func TestAuthRotateRepairsOneGroup(t *testing.T) {
	h := adminclienttest.NewHome(t)
	wantExit(t, runClawkerIn(h, "auth", "rotate"), 0)
	p := h.Paths(t)
	old := wantBundleMatches(t, h)
	if err := os.WriteFile(filepath.Join(p.AuthDir, certs.ServerCertFile), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	r := runClawkerIn(h, "auth", "rotate")
	wantExit(t, r, 0)
	checkGoldenFile(t, "auth_rotate_repair.golden", authGolden(h, r))
	m := wantBundleMatches(t, h)
	if !m.CA.Equal(old.CA) || !m.CLI.Equal(old.CLI) {
		t.Error("repairing the server cert replaced the CA or the CLI cert")
	}
}

func TestAuthRotateServerIP(t *testing.T) {
	h := adminclienttest.NewHome(t)
	r := runClawkerIn(h, "auth", "rotate", "--server-ip", "192.168.215.202", "--server-ip", "fd00::202")
	wantExit(t, r, 0)
	m := wantBundleMatches(t, h)
	want := []net.IP{net.ParseIP("192.168.215.202"), net.ParseIP("fd00::202")}
	for _, ip := range want {
		found := false
		for _, got := range m.Server.IPAddresses {
			found = found || got.Equal(ip)
		}
		if !found {
			t.Errorf("server cert IPs %v lack %v", m.Server.IPAddresses, ip)
		}
	}

	// A later run without the flag keeps the cert: it still covers what is
	// asked (127.0.0.1 only).
	r = runClawkerIn(h, "auth", "rotate")
	wantExit(t, r, 0)
	if !strings.Contains(lineOf(r.stdout, "✓ server "), " kept ") {
		t.Errorf("server cert not kept:\n%s", r.stdout)
	}
}

func TestAuthRotateBadServerIP(t *testing.T) {
	h := adminclienttest.NewHome(t)
	r := runClawkerIn(h, "auth", "rotate", "--server-ip", "clawker-net")
	wantExit(t, r, 1)
	if r.stdout != "" || r.stderr != "clawker: --server-ip: \"clawker-net\" is not an IP address\n" {
		t.Errorf("stdout %q, stderr %q", r.stdout, r.stderr)
	}
	if _, err := os.Stat(h.Paths(t).AuthDir); !os.IsNotExist(err) {
		t.Errorf("auth dir touched despite the bad flag: %v", err)
	}
}

func TestAuthRotateFailure(t *testing.T) {
	h := adminclienttest.NewHome(t)
	wantExit(t, runClawkerIn(h, "auth", "rotate"), 0)
	p := h.Paths(t)
	bundle := readDir(t, p.CPAuthDir)
	// A directory where server.crt belongs: Ensure rejects it and then
	// cannot replace it.
	crt := filepath.Join(p.AuthDir, certs.ServerCertFile)
	if err := os.Remove(crt); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(crt, 0o700); err != nil {
		t.Fatal(err)
	}

	r := runClawkerIn(h, "auth", "rotate")
	wantExit(t, r, 1)
	if !strings.HasPrefix(r.stdout, "✗ server  certs: write "+crt) || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	if want := "clawker: auth material in " + p.AuthDir + " is incomplete; the server bundle in " + p.CPAuthDir + " was left unchanged\n"; r.stderr != want {
		t.Errorf("stderr %q\nwant   %q", r.stderr, want)
	}
	if !sameFiles(bundle, readDir(t, p.CPAuthDir)) {
		t.Error("the server bundle changed although rotation failed")
	}
}
