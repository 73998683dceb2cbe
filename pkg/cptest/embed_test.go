package cptest

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/clawker/clawker-cp/pkg/ory"
)

// findOry takes $CLAWKER_ORY_DIR when it holds all three servers,
// executable, and otherwise says in one line what is missing and how to
// build it.
func TestFindOry(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvOryDir, dir)
	for _, n := range ory.Names[:2] {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "oathkeeper"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, reason := findOry()
	if got != "" || !strings.Contains(reason, "no Ory oathkeeper in "+dir) || !strings.Contains(reason, "`go tool task ory`") ||
		!strings.Contains(reason, EnvOryDir) || strings.Contains(reason, "\n") {
		t.Errorf("oathkeeper not executable: %q, %q", got, reason)
	}
	if err := os.Chmod(filepath.Join(dir, "oathkeeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, reason := findOry(); got != dir || reason != "" {
		t.Errorf("all three present: %q, %q", got, reason)
	}
	if got := OryDir(t); got != dir {
		t.Errorf("OryDir = %q, want %q", got, dir)
	}
}

// installFile replaces a different file through a rename (a reader never
// sees half of it), leaves an identical one alone and leaves no temporary
// file behind.
func TestInstallFile(t *testing.T) {
	dir := t.TempDir()
	tmpDir := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmpDir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	big := strings.Repeat("0123456789abcdef", 1<<17) // 2 MiB: more than one compare buffer
	if err := os.WriteFile(src, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte(big[:len(big)-1]+"!"), 0o755); err != nil {
		t.Fatal(err)
	}
	ino := func() uint64 {
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	before := ino()
	if err := installFile(src, dst, tmpDir); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dst)
	fi, _ := os.Stat(dst)
	if string(b) != big || fi.Mode().Perm() != 0o755 || ino() == before {
		t.Errorf("after install: %d bytes (want %d), mode %s, renamed in: %v", len(b), len(big), fi.Mode(), ino() != before)
	}
	same := ino()
	if err := installFile(src, dst, tmpDir); err != nil || ino() != same {
		t.Errorf("identical content was rewritten (err %v)", err)
	}
	if left, _ := os.ReadDir(tmpDir); len(left) != 0 {
		t.Errorf("left in the temporary directory: %v", left)
	}
	if err := installFile(filepath.Join(dir, "missing"), dst, tmpDir); err == nil {
		t.Error("a missing source installed")
	}
}
