package cptest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// skipOrFail is testkit.SkipOrFail under the name this package's helpers
// have always called it by.
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	testkit.SkipOrFail(t, reason)
}

// TestPinDirPrefix starts the name of every pin dir a test creates under
// /sys/fs/bpf, so a leftover can be traced to tests.
const TestPinDirPrefix = "clawker-test-"

// RequireBPF skips (fails under CI=true) when this process cannot load
// BPF programs: not root, or no bpffs.
func RequireBPF(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "BPF tests need root")
	}
	if err := egress.EnsureBPFFS(); err != nil {
		testkit.SkipOrFail(t, "no bpffs: "+err.Error())
	}
}

// TestPinDir returns a fresh pin dir path under /sys/fs/bpf for one test
// (not created: the code under test creates it). Cleanup flushes whatever
// was pinned there, detaching any link, even when the test failed.
func TestPinDir(t testing.TB) string {
	t.Helper()
	RequireBPF(t)
	dir := filepath.Join(egress.BPFFSRoot, TestPinDirPrefix+NewRunID())
	t.Cleanup(func() {
		if err := egress.FlushPins(dir); err != nil {
			t.Errorf("cptest: flushing test pin dir %s: %v", dir, err)
		}
	})
	return dir
}
