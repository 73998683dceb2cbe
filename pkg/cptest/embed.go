package cptest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// Package paths of the binaries clawker embeds.
const (
	embedCPPkg    = "github.com/clawker/clawker-cp/cmd/clawker-cp"
	embedAgentPkg = "github.com/clawker/clawker-cp/cmd/clawkerd"
	embedCLIPkg   = "github.com/clawker/clawker-cp/cmd/clawker"
)

// embedDir is where pkg/cpboot embeds the binaries from, relative to the
// module root; the Ory servers go to its ory/ (cpboot.OryDir; cptest does
// not import cpboot, whose tests import cptest).
const embedDir = "pkg/cpboot/embedded"

// EnvOryDir names the directory holding the Ory servers (hydra, kratos,
// oathkeeper); unset means <module root>/bin/ory, where `go tool task ory`
// builds them.
const EnvOryDir = "CLAWKER_ORY_DIR"

var embedBuild struct {
	buildEntry
	oryDir    string // "" when built without Ory
	oryReason string // why not, when oryDir is ""
}

// BuildClawkerWithCP builds clawker-cp and clawkerd (with BuildBinaries),
// copies them and the Ory servers into pkg/cpboot/embedded/ of the module,
// and builds clawker with them embedded, once per test process. It returns
// each binary's path by its name in the bundle: "clawker", "clawker-cp",
// "clawkerd" and, when Ory is embedded, "ory/hydra", "ory/kratos" and
// "ory/oathkeeper" (so every key but "clawker" is a file of the bundle, at
// that path).
//
// The Ory servers come from OryDir's directory. When they are missing the
// test fails under CI=true (one line naming `go tool task ory`); elsewhere
// clawker is built without them (the control plane then runs without Ory),
// and t.Log says so.
//
// Several test processes may do this at once (go test runs packages in
// parallel): a file lock keyed by the module root serialises the copy and
// the build, each binary is written beside the directory and renamed in, and
// a binary whose content is already in place is not rewritten.
func BuildClawkerWithCP(t testing.TB) map[string]string {
	t.Helper()
	bins := BuildBinaries(t, embedCPPkg, embedAgentPkg)
	embedBuild.once.Do(func() {
		embedBuild.oryDir, embedBuild.oryReason = findOry()
		if embedBuild.oryDir == "" && testkit.InCI() {
			embedBuild.err = errors.New("CI=true and " + embedBuild.oryReason)
			return
		}
		embedBuild.path, embedBuild.err = buildEmbedding(bins, embedBuild.oryDir, "")
	})
	if embedBuild.err != nil {
		t.Fatalf("cptest: building clawker with the control plane embedded: %v", embedBuild.err)
	}
	out := map[string]string{
		"clawker":    embedBuild.path,
		"clawker-cp": bins["clawker-cp"],
		"clawkerd":   bins["clawkerd"],
	}
	if embedBuild.oryDir == "" {
		t.Logf("cptest: clawker is built without Ory (its control plane runs without it): %s", embedBuild.oryReason)
		return out
	}
	for _, n := range ory.Names {
		out["ory/"+n] = filepath.Join(embedBuild.oryDir, n)
	}
	return out
}

// OryDir returns the directory holding the Ory servers, for tests that run
// clawker-cp as a host process (--ory-dir): $CLAWKER_ORY_DIR, else
// <module root>/bin/ory. When one of the three is missing (or not
// executable) it skips the test with a one-line reason naming `go tool task
// ory`, or fails it under CI=true.
func OryDir(t testing.TB) string {
	t.Helper()
	dir, reason := findOry()
	if dir == "" {
		testkit.SkipOrFail(t, reason)
	}
	return dir
}

var oryRoot = sync.OnceValues(func() (string, error) {
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	return moduleRoot(goBin)
})

// findOry returns the Ory directory when it holds all three servers,
// executable; else "" and why not, in one line.
func findOry() (dir, reason string) {
	dir = os.Getenv(EnvOryDir)
	if dir == "" {
		root, err := oryRoot()
		if err != nil {
			return "", "no Ory servers: cannot locate the module root to find bin/ory: " + err.Error()
		}
		dir = filepath.Join(root, "bin", "ory")
	}
	var missing []string
	for _, n := range ory.Names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Sprintf("no Ory %s in %s: build them with `go tool task ory` (or set %s)", strings.Join(missing, ", "), dir, EnvOryDir)
	}
	return dir, ""
}

// buildEmbedding builds clawker embedding bins, the Ory servers in oryDir
// (none for "") and the firewall siblings in stackDir (none for "").
func buildEmbedding(bins map[string]string, oryDir, stackDir string) (string, error) {
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

	embedded := filepath.Join(root, embedDir)
	// Temporary copies go beside embedded/, never into it (a concurrent
	// build would embed them).
	tmpDir := filepath.Dir(embedded)
	for _, name := range []string{"clawker-cp", "clawkerd"} {
		if err := installFile(bins[name], filepath.Join(embedded, name), tmpDir); err != nil {
			return "", err
		}
	}
	oryEmbedded := filepath.Join(embedded, "ory")
	if oryDir != "" {
		if err := os.MkdirAll(oryEmbedded, 0o755); err != nil {
			return "", err
		}
		for _, n := range ory.Names {
			if err := installFile(filepath.Join(oryDir, n), filepath.Join(oryEmbedded, n), tmpDir); err != nil {
				return "", err
			}
		}
	} else if err := removeOry(oryEmbedded, tmpDir); err != nil {
		// Left over from a build with Ory: this clawker is meant without.
		return "", err
	}
	// The tests' clawker carries no firewall stack (its CP adopts the
	// stand-ins the tests start at .200/.201); `go tool task build` may
	// have left one behind.
	if err := removeEmbeddedDir(filepath.Join(embedded, "stack"), tmpDir); err != nil {
		return "", err
	}
	if stackDir != "" {
		// Embedded for this build only, and gone again before the lock is
		// released (BuildClawkerWithStack).
		if err := installStack(stackDir, filepath.Join(embedded, "stack"), tmpDir); err != nil {
			return "", err
		}
		defer removeEmbeddedDir(filepath.Join(embedded, "stack"), tmpDir)
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

// removeOry removes embedded/ory: renamed out of embedded/ first, so a
// concurrent build sees all of it or none.
func removeOry(oryEmbedded, tmpDir string) error { return removeEmbeddedDir(oryEmbedded, tmpDir) }

func removeEmbeddedDir(dir, tmpDir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	gone, err := os.MkdirTemp(tmpDir, ".removed.*.tmp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(gone)
	return os.Rename(dir, filepath.Join(gone, filepath.Base(dir)))
}

// installFile puts a copy of src (mode 0755) at dst: written to a temporary
// file in tmpDir (outside the embedded directory, so no concurrent build
// embeds it half-written) and renamed into place. Identical content is left
// untouched. Files are streamed: the Ory servers are ~50 MB each.
func installFile(src, dst, tmpDir string) error {
	if same, err := sameContent(src, dst); err != nil || same {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(tmpDir, "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
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

// sameContent reports whether dst exists with src's content. Only an
// unreadable src is an error.
func sameContent(src, dst string) (bool, error) {
	a, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer a.Close()
	b, err := os.Open(dst)
	if err != nil {
		return false, nil
	}
	defer b.Close()
	ai, err := a.Stat()
	if err != nil {
		return false, err
	}
	if bi, err := b.Stat(); err != nil || bi.Size() != ai.Size() || bi.Mode()&0o111 == 0 {
		return false, nil
	}
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		n, errA := io.ReadFull(a, bufA)
		m, errB := io.ReadFull(b, bufB)
		if n != m || !bytes.Equal(bufA[:n], bufB[:m]) {
			return false, nil
		}
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			return errB == errA, nil
		}
		if errA != nil {
			return false, errA
		}
		if errB != nil {
			return false, nil
		}
	}
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
