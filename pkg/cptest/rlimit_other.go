//go:build !unix

package cptest

import "testing"

// RaiseNoFile does nothing where there is no RLIMIT_NOFILE.
func RaiseNoFile(t testing.TB, n uint64) {}
