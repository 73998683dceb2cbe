// Package orytest helps tests that run the real Ory servers: it finds the
// binaries and builds a Config with free loopback ports and fresh auth
// material in temporary directories.
package orytest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// Privileges is what /proc/<pid>/status says about a process's identity
// and capabilities.
type Privileges struct {
	UID, GID   [4]string // real, effective, saved, filesystem
	Groups     string    // supplementary groups, "" for none
	Caps       map[string]string
	NoNewPrivs string
}

// ReadPrivileges parses /proc/<pid>/status.
func ReadPrivileges(pid int) (Privileges, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return Privileges{}, err
	}
	return ParsePrivileges(string(b)), nil
}

// ParsePrivileges parses the text of a /proc/<pid>/status.
func ParsePrivileges(status string) Privileges {
	p := Privileges{Caps: map[string]string{}}
	for _, line := range strings.Split(status, "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		switch {
		case key == "Uid" && len(fields) == 4:
			copy(p.UID[:], fields)
		case key == "Gid" && len(fields) == 4:
			copy(p.GID[:], fields)
		case key == "Groups":
			p.Groups = strings.Join(fields, " ")
		case strings.HasPrefix(key, "Cap") && len(fields) == 1:
			p.Caps[key] = fields[0]
		case key == "NoNewPrivs" && len(fields) == 1:
			p.NoNewPrivs = fields[0]
		}
	}
	return p
}

// CapSets are the capability lines of /proc/<pid>/status.
var CapSets = []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}

// Dropped returns what keeps p from being fully unprivileged as u: every
// id u's, no supplementary group, every capability set empty, no_new_privs
// set. nil when nothing does.
func (p Privileges) Dropped(u ory.User) error {
	var bad []string
	for i := range 4 {
		if p.UID[i] != strconv.Itoa(u.UID) || p.GID[i] != strconv.Itoa(u.GID) {
			bad = append(bad, fmt.Sprintf("Uid %v Gid %v, want %d and %d throughout", p.UID, p.GID, u.UID, u.GID))
			break
		}
	}
	if p.Groups != "" {
		bad = append(bad, "Groups "+p.Groups+", want none")
	}
	for _, c := range CapSets {
		v, ok := p.Caps[c]
		if n, err := strconv.ParseUint(v, 16, 64); !ok || err != nil || n != 0 {
			bad = append(bad, fmt.Sprintf("%s %q, want 0", c, v))
		}
	}
	if p.NoNewPrivs != "1" {
		bad = append(bad, fmt.Sprintf("NoNewPrivs %q, want 1", p.NoNewPrivs))
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// AsUser returns e with the servers running as u (root only: the test is
// skipped otherwise, failed under CI=true). The run dir moves to a fresh
// directory under the system temp dir, because t.TempDir's parents are
// 0700 and so out of u's reach; it is removed when the test ends. The
// server bundle stays where it was, unreachable by u, as in the control
// plane: the servers read Prepare's copies.
func (e Env) AsUser(t testing.TB, u ory.User) Env {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "running the Ory servers as another user needs root")
	}
	dir, err := os.MkdirTemp("", "clawker-test-ory-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	e.Config.RunDir = dir // Prepare makes it u's
	e.Config.User = &u
	return e
}
