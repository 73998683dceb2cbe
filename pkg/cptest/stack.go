package cptest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// EnvStackDir overrides where StackDir looks for clawker-dns.
const EnvStackDir = "CLAWKER_TEST_STACK_DIR"

var stackDir struct {
	once sync.Once
	dir  string
	err  error
}

// StackDir is a directory holding the firewall siblings' binaries, as
// clawker-cp's --stack-dir wants it: clawker-proxy built now (static),
// clawker-dns from bin/stack (`go tool task dns` builds it; it is its own
// module, too slow to build per test run). Skips (fails under CI=true)
// when clawker-dns is missing.
func StackDir(t testing.TB) string {
	t.Helper()
	dns := os.Getenv(EnvStackDir)
	if dns == "" {
		root, err := oryRoot()
		if err != nil {
			skipOrFail(t, "no firewall stack: cannot locate the module root: "+err.Error())
		}
		dns = filepath.Join(root, "bin", "stack")
	}
	dnsBin := filepath.Join(dns, "clawker-dns")
	if fi, err := os.Stat(dnsBin); err != nil || fi.Mode()&0o111 == 0 {
		skipOrFail(t, fmt.Sprintf("no %s: build it with `go tool task dns` (or set %s)", dnsBin, EnvStackDir))
	}
	proxy := BuildBinaries(t, "./cmd/clawker-proxy")["clawker-proxy"]
	stackDir.once.Do(func() {
		dir, err := buildDir()
		if err == nil {
			dir, err = os.MkdirTemp(dir, "stack-")
		}
		if err == nil {
			err = installFile(dnsBin, filepath.Join(dir, "clawker-dns"), dir)
		}
		if err == nil {
			err = installFile(proxy, filepath.Join(dir, "clawker-proxy"), dir)
		}
		stackDir.dir, stackDir.err = dir, err
	})
	if stackDir.err != nil {
		t.Fatalf("cptest: preparing the stack dir: %v", stackDir.err)
	}
	return stackDir.dir
}
