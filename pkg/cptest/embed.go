package cptest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Package paths of the binaries clawker embeds.
const (
	embedCPPkg    = "github.com/clawker/clawker-cp/cmd/clawker-cp"
	embedAgentPkg = "github.com/clawker/clawker-cp/cmd/clawkerd"
	embedCLIPkg   = "github.com/clawker/clawker-cp/cmd/clawker"
)

// embedDir is where pkg/cpboot embeds the binaries from, relative to the
// module root.
const embedDir = "pkg/cpboot/embedded"

var embedBuild buildEntry

// BuildClawkerWithCP builds clawker-cp and clawkerd (with BuildBinaries),
// copies them into pkg/cpboot/embedded/ of the module, and builds clawker
// with them embedded, once per test process. It returns binary name to path
// for all three ("clawker", "clawker-cp", "clawkerd").
//
// Several test processes may do this at once (go test runs packages in
// parallel): a file lock keyed by the module root serialises the copy and
// the build, each binary is written beside the directory and renamed in, and
// a binary whose content is already in place is not rewritten.
func BuildClawkerWithCP(t testing.TB) map[string]string {
	t.Helper()
	bins := BuildBinaries(t, embedCPPkg, embedAgentPkg)
	embedBuild.once.Do(func() { embedBuild.path, embedBuild.err = buildEmbedding(bins) })
	if embedBuild.err != nil {
		t.Fatalf("cptest: building clawker with the control plane embedded: %v", embedBuild.err)
	}
	return map[string]string{
		"clawker":    embedBuild.path,
		"clawker-cp": bins["clawker-cp"],
		"clawkerd":   bins["clawkerd"],
	}
}

func buildEmbedding(bins map[string]string) (string, error) {
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	root, err := moduleRoot(goBin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(root))
	unlock, err := flockPath(filepath.Join(os.TempDir(), "cptest-embed-"+hex.EncodeToString(sum[:8])+".lock"), BuildTimeout)
	if err != nil {
		return "", err
	}
	defer unlock()

	for _, name := range []string{"clawker-cp", "clawkerd"} {
		if err := installFile(bins[name], filepath.Join(root, embedDir, name)); err != nil {
			return "", err
		}
	}
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	sub, err := os.MkdirTemp(dir, "embedded-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(sub, binaryName(embedCLIPkg))
	return out, goBuild(goBin, root, out, embedCLIPkg)
}

// installFile puts a copy of src at dst: written to a temporary file in
// dst's parent's parent (outside the embedded directory, so no concurrent
// build embeds it half-written) and renamed into place. Identical content is
// left untouched.
func installFile(src, dst string) error {
	want, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, want) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(filepath.Dir(dst)), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, bytes.NewReader(want)); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// flockPath takes an exclusive flock on path, waiting up to timeout.
func flockPath(path string, timeout time.Duration) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); _ = f.Close() }, nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("waiting for the lock %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
