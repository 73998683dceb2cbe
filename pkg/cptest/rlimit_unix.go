//go:build unix

package cptest

import (
	"syscall"
	"testing"
)

// RaiseNoFile raises this process's soft RLIMIT_NOFILE to at least n (up to
// the hard limit), so that it and the processes it starts afterwards (they
// inherit the limit) can hold n descriptors. It fails the test when the
// hard limit is below n.
func RaiseNoFile(t testing.TB, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("cptest: getrlimit: %v", err)
	}
	if uint64(lim.Max) < n {
		t.Fatalf("cptest: the RLIMIT_NOFILE hard limit is %d and the test needs %d descriptors; raise it (ulimit -Hn)", lim.Max, n)
	}
	if uint64(lim.Cur) >= n {
		return
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("cptest: setrlimit NOFILE %d: %v", n, err)
	}
}
