//go:build !linux

package netprobe

import (
	"context"
	"errors"
	"runtime"
	"time"
)

// The probe's attempts are Linux only (the firewall under test is eBPF);
// elsewhere the package still builds, for the shared types.

var errUnsupported = errors.New("the probe's attempts need Linux, not " + runtime.GOOS)

func runAttempt(a Attempt, seq int64, timeout time.Duration) Outcome {
	var o Outcome
	o.fail(a.Kind, errUnsupported)
	return o
}

func runAsUser(ctx context.Context, a Attempt, seq int64, timeout time.Duration) Outcome {
	return runAttempt(a, seq, timeout)
}

func errnoName(error) (string, bool) { return "", false }
