// Package cptest helps tests that exec the real clawker binaries: it builds
// them once per test process, gives each test its own XDG home with free
// ports, starts clawker-cp with its JSON log captured, and polls its health
// port. Everything is bounded by a timeout, and a failing test prints the
// tail of the control plane's stderr.
//
// A typical test:
//
//	bin := cptest.BuildBinaries(t, "github.com/clawker/clawker-cp/cmd/clawker-cp")["clawker-cp"]
//	home := cptest.NewCPHome(t, "")           // free ports, auth material
//	p := cptest.StartCP(t, home, bin)
//	p.WaitHealthy(t, time.Minute)
//	p.Signal(syscall.SIGTERM)
//	code := p.MustExit(t, 30*time.Second)
//	steps := p.Events("drain_step")
//
// A test package that uses BuildBinaries should call Main from its TestMain
// so that the directory holding the binaries is removed after the run:
//
//	func TestMain(m *testing.M) { cptest.Main(m) }
package cptest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// BuildTimeout bounds one `go build`. A cold build cache on a loaded machine
// is slow; a warm one takes seconds.
var BuildTimeout = 10 * time.Minute

var builds struct {
	mu      sync.Mutex
	dir     string
	dirErr  error
	entries map[string]*buildEntry
}

type buildEntry struct {
	once sync.Once
	path string
	err  error
}

// BuildBinaries builds the named main packages, each at most once per test
// process, and returns binary name (the package path's last element, as `go
// build` names it) to path. A package is an import path
// ("github.com/clawker/clawker-cp/cmd/clawker-cp") or a path relative to
// the module root ("./cmd/clawker-cp"), so it works from any package
// directory inside the module. The binaries are static (CGO_ENABLED=0).
// Concurrent callers wait for the one build of a package.
func BuildBinaries(t testing.TB, pkgs ...string) map[string]string {
	t.Helper()
	out := make(map[string]string, len(pkgs))
	for _, pkg := range pkgs {
		e := buildEntryFor(pkg)
		e.once.Do(func() { e.path, e.err = build(pkg) })
		if e.err != nil {
			t.Fatalf("cptest: building %s: %v", pkg, e.err)
		}
		out[binaryName(pkg)] = e.path
	}
	return out
}

// Main runs the tests and then removes the directory BuildBinaries built
// into. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// Cleanup removes the binaries BuildBinaries built. Main calls it; call it
// yourself from a TestMain that does more.
func Cleanup() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		_ = os.RemoveAll(builds.dir)
		builds.dir = ""
		builds.entries = nil
	}
}

func buildEntryFor(pkg string) *buildEntry {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.entries == nil {
		builds.entries = map[string]*buildEntry{}
	}
	e, ok := builds.entries[pkg]
	if !ok {
		e = &buildEntry{}
		builds.entries[pkg] = e
	}
	return e
}

func buildDir() (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir == "" && builds.dirErr == nil {
		builds.dir, builds.dirErr = os.MkdirTemp("", "cptest-bin-")
	}
	return builds.dir, builds.dirErr
}

func binaryName(pkg string) string {
	name := path.Base(strings.TrimSuffix(pkg, "/"))
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	return name
}

func build(pkg string) (string, error) {
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	root, err := moduleRoot(goBin)
	if err != nil {
		return "", err
	}
	// One directory per package, so two packages with the same last element
	// cannot overwrite each other.
	sub, err := os.MkdirTemp(dir, "pkg-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(sub, binaryName(pkg))
	return out, goBuild(goBin, root, out, pkg)
}

// goBuild builds the static binary of pkg at out, from the module root,
// bounded by BuildTimeout.
func goBuild(goBin, root, out, pkg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var outBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &outBuf
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("go build did not finish within %s: %s", BuildTimeout, outBuf.String())
		}
		return fmt.Errorf("go build: %w\n%s", err, outBuf.String())
	}
	return nil
}

// goTool finds the go command: the one on PATH, else the one of GOROOT.
func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if gr := os.Getenv("GOROOT"); gr != "" {
		p := filepath.Join(gr, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no go command on PATH or in $GOROOT/bin")
}

// moduleRoot is the directory of the go.mod enclosing the working directory
// (a test runs in its package's directory).
func moduleRoot(goBin string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("the working directory is not inside a Go module")
	}
	return filepath.Dir(mod), nil
}
