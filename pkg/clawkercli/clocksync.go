package clawkercli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// ErrClockSyncDeadline is the clock-sync gate's failure: the control
// plane's clock did not reach the host's before ClockGate.Deadline.
var ErrClockSyncDeadline = errors.New("cp clock sync deadline exceeded")

// Defaults of ClockGate.
const (
	DefaultClockSyncDeadline = 30 * time.Second
	DefaultClockSyncInterval = 250 * time.Millisecond
)

// TimeSource is the AdminService call the clock-sync gate polls;
// *adminclient.Client implements it.
type TimeSource interface {
	GetSystemTime(ctx context.Context, in *adminv1.GetSystemTimeRequest, opts ...grpc.CallOption) (*adminv1.GetSystemTimeResponse, error)
}

// ClockGate holds an agent container's start back until the control
// plane's clock has reached the host's. Credentials baked into the
// container are minted with the host's clock and checked against the
// control plane's with zero leeway, so a control plane whose clock lags
// (a Docker Desktop VM after the host slept) would find them issued in the
// future. Waiting, rather than re-minting or correcting for the skew,
// leaves nothing unusable in the container: once the clock catches up a
// plain retry works.
//
// Each poll reads the host's clock just before it sends GetSystemTime and
// passes when the control plane's answer is not before that instant. The
// control plane reads its clock after the request left, so a correct
// clock passes on the first poll whatever the round trip; a clock that
// lags by any amount fails every poll until it has caught up. (The host
// instant after the answer would fail a correct clock by the round trip;
// one fixed instant taken when the gate starts would let a clock that
// stays behind pass once enough time went by.)
type ClockGate struct {
	// Deadline bounds the wait, from the first poll; 0 means
	// DefaultClockSyncDeadline.
	Deadline time.Duration
	// Interval is the time between polls; 0 means DefaultClockSyncInterval.
	Interval time.Duration
	// HostNow is the host's clock; nil means time.Now.
	HostNow func() time.Time
}

func (g *ClockGate) deadline() time.Duration {
	if g.Deadline > 0 {
		return g.Deadline
	}
	return DefaultClockSyncDeadline
}

func (g *ClockGate) interval() time.Duration {
	if g.Interval > 0 {
		return g.Interval
	}
	return DefaultClockSyncInterval
}

func (g *ClockGate) hostNow() time.Time {
	if g.HostNow != nil {
		return g.HostNow()
	}
	return time.Now()
}

// Wait polls src until the control plane's clock has reached the host's
// (see ClockGate). Past the deadline it returns ErrClockSyncDeadline,
// alone when the control plane answered and lagged, with the last error
// when its last poll failed. An answer that no retry can change (a status
// other than Unavailable, DeadlineExceeded or ResourceExhausted) fails at
// once. rep shows the wait when the first poll lags; nil shows nothing.
func (g *ClockGate) Wait(ctx context.Context, src TimeSource, rep cpboot.Reporter) error {
	if rep == nil {
		rep = nopReporter{}
	}
	end := time.Now().Add(g.deadline())
	dctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	tick := time.NewTicker(g.interval())
	defer tick.Stop()
	waiting := false
	var lastErr error
	for {
		cctx, ccancel := context.WithTimeout(dctx, adminclient.CallTimeout)
		// Wall clock only: the answer carries no monotonic reading.
		sent := g.hostNow().Round(0)
		resp, err := src.GetSystemTime(cctx, &adminv1.GetSystemTimeRequest{})
		ccancel()
		switch {
		case err == nil && resp.GetNow().IsValid():
			lastErr = nil
			cpNow := resp.GetNow().AsTime()
			if !cpNow.Before(sent) {
				if waiting {
					rep.End("control plane clock caught up with the host's", nil)
				}
				return nil
			}
			if !waiting {
				waiting = true
				rep.Begin(fmt.Sprintf("waiting for the control plane's clock (%s behind the host's) to catch up, up to %s",
					sent.Sub(cpNow).Round(time.Millisecond), g.deadline()))
			}
		case err == nil:
			lastErr = errors.New("GetSystemTime answered without a time")
		case ctx.Err() != nil:
			if waiting {
				rep.End("", ctx.Err())
			}
			return ctx.Err()
		case !time.Now().Before(end):
			// The deadline cut this call short: not the call's fault.
			// (gRPC may report it before dctx.Err is set.)
		case !transient(err):
			if waiting {
				rep.End("", err)
			}
			return fmt.Errorf("cp clock sync: GetSystemTime: %w", err)
		default:
			lastErr = err
		}
		select {
		case <-tick.C:
			if dctx.Err() == nil {
				continue
			}
		case <-dctx.Done():
		}
		if ctx.Err() != nil {
			if waiting {
				rep.End("", ctx.Err())
			}
			return ctx.Err()
		}
		err = ErrClockSyncDeadline
		if lastErr != nil {
			err = fmt.Errorf("%w: the last GetSystemTime failed: %v", ErrClockSyncDeadline, lastErr)
		}
		if waiting {
			rep.End("", err)
		}
		return err
	}
}

// transient reports whether a failed GetSystemTime is worth another poll.
func transient(err error) bool {
	st, ok := grpcstatus.FromError(err)
	if !ok {
		return true
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return true
	}
	return false
}

// waitCP dials the control plane's AdminService and waits at the gate.
func (g *ClockGate) waitCP(ctx context.Context, paths settings.Paths, s settings.Settings, rep cpboot.Reporter) error {
	c, err := adminclient.Dial(ctx, paths, s)
	if err != nil {
		return err
	}
	defer c.Close()
	return g.Wait(ctx, c, rep)
}

type nopReporter struct{}

func (nopReporter) Begin(string)      {}
func (nopReporter) End(string, error) {}
func (nopReporter) Note(string)       {}
