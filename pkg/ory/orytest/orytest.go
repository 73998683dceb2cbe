// Package orytest helps tests that run the real Ory servers: it finds the
// binaries and builds a Config with free loopback ports and fresh auth
// material in temporary directories.
package orytest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/ory"
)

// EnvDir names the directory holding hydra, kratos and oathkeeper.
const EnvDir = "CLAWKER_ORY_DIR"

// BinDir returns the directory of the Ory binaries: $CLAWKER_ORY_DIR, else
// <module root>/bin/ory (where `go tool task ory` builds them). When one of
// the servers (all three, or those named) is missing it skips the test with
// a one-line reason, or fails it under CI=true.
func BinDir(t testing.TB, names ...string) string {
	t.Helper()
	dir := os.Getenv(EnvDir)
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			skipOrFail(t, "cannot locate the module root to find bin/ory: "+err.Error())
		}
		dir = filepath.Join(root, "bin", "ory")
	}
	if len(names) == 0 {
		names = ory.Names
	}
	for _, n := range names {
		p := filepath.Join(dir, n)
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			skipOrFail(t, "no Ory binary "+p+" (build them with `go tool task ory`, or set "+EnvDir+")")
		}
	}
	return dir
}

func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but this test cannot run: %s", reason)
	}
	t.Skip(reason)
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/clawker/clawker-cp\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

// Env is the material of one test's Ory stack.
type Env struct {
	Config    ory.Config
	Material  *certs.Material // host side: holds the signing key
	BundleDir string          // the server bundle (server.crt/key, ca.crt, signing.jwk.json)
}

// NewEnv creates auth material in a temporary directory, writes the
// server bundle, and returns a Config with free loopback ports (the debug
// upstream included, on which nothing listens unless the test starts
// something), the run dir inside the test's temp dir.
func NewEnv(t testing.TB) Env {
	t.Helper()
	dir := t.TempDir()
	authDir := filepath.Join(dir, "auth")
	if _, err := certs.Ensure(authDir, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	m, err := certs.Load(authDir)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	if err := m.WriteServerBundle(bundle); err != nil {
		t.Fatal(err)
	}
	p := cptest.FreePorts(t, 7)
	cfg := ory.Config{
		RunDir:   filepath.Join(dir, "run"),
		BindHost: "127.0.0.1",
		Ports: ory.Ports{
			HydraPublic: p[0], HydraAdmin: p[1], KratosPublic: p[2], KratosAdmin: p[3],
			Oathkeeper: p[4], OathkeeperAPI: p[5], Debug: p[6],
		},
	}.FromServerBundle(bundle)
	return Env{Config: cfg, Material: m, BundleDir: bundle}
}
