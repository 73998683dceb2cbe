// Package testkit holds the generic helpers tests of every layer share:
// waiting for a condition, and skipping a test that cannot run here (or
// failing it under CI=true, where a skip would hide that it never ran).
//
// It is a leaf: it imports nothing of this module (the layering test in
// pkg/cptest checks that), so any package's tests can use it, including the
// packages pkg/cptest itself builds on. Helpers that need the project's own
// packages (a CP process, Docker labels, BPF pin dirs) stay in pkg/cptest.
package testkit

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// PollInterval is how often WaitFor and WaitForSeen re-check their
// condition.
var PollInterval = 2 * time.Millisecond

// WaitFor polls cond every PollInterval until it reports true, and fails the
// test when it did not within the bound. what names the awaited condition in
// the failure message.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	WaitForSeen(t, within, what, func() (bool, string) { return cond(), "" })
}

// WaitForSeen is WaitFor for a condition that also describes what it saw,
// which the failure message quotes (its last value).
func WaitForSeen(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %s waiting for %s", within, what)
			if last != "" {
				msg += "; last seen: " + last
			}
			t.Fatal(msg)
		}
		time.Sleep(PollInterval)
	}
}

// InCI reports whether the tests run under CI=true, where every test must
// run: a missing prerequisite is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips the test with a one-line reason, or fails it with that
// reason under CI=true.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true but this test cannot run: %s", reason)
	}
	t.Skip(reason)
}
