package sibling_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clawker/clawker-cp/pkg/sibling"
)

// The files copied into a sibling image name its tag: a changed CA bundle
// makes a new image (and so a new container), a missing one is left out.
func TestImageRefCoversFiles(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	ref := func(files map[string]string) string {
		t.Helper()
		r, err := sibling.Spec{Repo: "clawker-proxy", Binary: bin, Files: files}.ImageRef()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	bare := ref(nil)
	h, _ := sibling.BinaryHash(bin)
	if bare != "clawker-proxy:bin-"+h {
		t.Fatalf("without files %s, want the binary's hash", bare)
	}
	if got := ref(map[string]string{"/etc/ssl/certs/ca-certificates.crt": filepath.Join(dir, "absent")}); got != bare {
		t.Fatalf("a missing file changed the tag: %s", got)
	}
	roots := filepath.Join(dir, "roots.pem")
	os.WriteFile(roots, []byte("one"), 0o644)
	one := ref(map[string]string{"/etc/ssl/certs/ca-certificates.crt": roots})
	if one == bare || !strings.HasPrefix(one, "clawker-proxy:bin-") {
		t.Fatalf("with a file %s, without %s", one, bare)
	}
	os.WriteFile(roots, []byte("two"), 0o644)
	if two := ref(map[string]string{"/etc/ssl/certs/ca-certificates.crt": roots}); two == one {
		t.Fatal("a changed file kept the tag")
	}
}
