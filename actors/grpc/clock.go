package grpc

import (
	"fmt"
	"strings"
	"time"
)

// ClockSkew is the debug knob that makes GetSystemTime, and nothing else,
// report a skewed clock, so tests can drive the CLI's clock-sync gate
// against a control plane whose clock lags (as a Docker Desktop VM's does
// after the host slept). Its text form is <lag>[,<catch-up-after>]: "-5s"
// is 5s behind forever, "-5s,2s" is 5s behind until 2s after the clock was
// made, then correct.
type ClockSkew struct {
	// Lag is added to the real clock: negative is behind.
	Lag time.Duration
	// CatchUpAfter is when the clock becomes correct, counted from the
	// start given to Clock; 0 means never.
	CatchUpAfter time.Duration
}

// clockSkewFormat is the knob's format, for error messages.
const clockSkewFormat = "<lag>[,<catch-up-after>], e.g. -5s (5s behind, forever) or -5s,2s (5s behind until 2s after start)"

// ParseClockSkew reads the knob's value v; env is the variable's name,
// which errors name along with the format.
func ParseClockSkew(env, v string) (ClockSkew, error) {
	bad := func(format string, args ...any) (ClockSkew, error) {
		return ClockSkew{}, fmt.Errorf("%s=%q: %s; want %s", env, v, fmt.Sprintf(format, args...), clockSkewFormat)
	}
	lagText, catchText, hasCatch := strings.Cut(v, ",")
	lagText, catchText = strings.TrimSpace(lagText), strings.TrimSpace(catchText)
	if lagText == "" {
		return bad("no lag")
	}
	var k ClockSkew
	var err error
	if k.Lag, err = time.ParseDuration(lagText); err != nil {
		return bad("lag %q is not a duration", lagText)
	}
	if !hasCatch {
		return k, nil
	}
	if k.CatchUpAfter, err = time.ParseDuration(catchText); err != nil {
		return bad("catch-up-after %q is not a duration", catchText)
	}
	if k.CatchUpAfter <= 0 {
		return bad("catch-up-after must be positive")
	}
	return k, nil
}

// Clock returns the skewed clock: the real one plus Lag, until
// CatchUpAfter has passed since start (measured on the monotonic clock).
func (k ClockSkew) Clock(start time.Time) func() time.Time {
	return func() time.Time {
		now := time.Now()
		if k.CatchUpAfter > 0 && now.Sub(start) >= k.CatchUpAfter {
			return now
		}
		return now.Add(k.Lag)
	}
}

// String is the knob's text form.
func (k ClockSkew) String() string {
	if k.CatchUpAfter > 0 {
		return k.Lag.String() + "," + k.CatchUpAfter.String()
	}
	return k.Lag.String()
}
