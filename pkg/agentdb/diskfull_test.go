package agentdb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/pkg/testkit"
)

// TestRegisterOnAFullDisk runs the registry on a 1 MiB tmpfs of the test's
// own and fills it: a new binding is refused with ErrDiskFull naming the
// directory, every earlier binding is kept (listed, integrity_check ok,
// and still there after a reopen), and once space is freed the next
// binding is made.
func TestRegisterOnAFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "needs root to mount a tmpfs")
	}
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("clawker-test-agentdb", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		testkit.SkipOrFail(t, "cannot mount a tmpfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting the test's tmpfs %s: %v", dir, err)
		}
	})
	ctx := context.Background()
	path := filepath.Join(dir, "controlplane.db")
	d := openTest(t, path)
	at := time.Now()
	const before = 20
	for i := range before {
		if _, _, err := d.Register(ctx, newAgent("p", fmt.Sprintf("a%d", i), fmt.Sprintf("c%d", i), fmt.Sprintf("k%d", i), at)); err != nil {
			t.Fatal(err)
		}
	}

	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)
	var refused error
	for i := range 200 { // the WAL may hold a few pages of slack
		_, _, err := d.Register(ctx, newAgent("p", fmt.Sprintf("new%d", i), fmt.Sprintf("cn%d", i), fmt.Sprintf("kn%d", i), at))
		if err != nil {
			refused = err
			break
		}
	}
	if !errors.Is(refused, ErrDiskFull) || !strings.Contains(refused.Error(), dir) || !strings.Contains(refused.Error(), "free space") {
		t.Fatalf("register on a full disk: %v; want ErrDiskFull naming %s and the fix", refused, dir)
	}
	t.Logf("refused: %v", refused)
	kept, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) < before {
		t.Fatalf("%d bindings listed on the full disk, want at least the %d made before", len(kept), before)
	}
	if err := d.IntegrityCheck(ctx); err != nil {
		t.Fatalf("integrity_check on the full disk: %v", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, created, err := d.Register(ctx, newAgent("p", "after", "c-after", "k-after", at)); err != nil || !created {
		t.Fatalf("register after space was freed: created %v, %v", created, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = openTest(t, path)
	again, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(kept)+1 {
		t.Errorf("after a reopen: %d bindings, want %d", len(again), len(kept)+1)
	}
}

// fillDisk writes to path until the filesystem has no space left.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}
