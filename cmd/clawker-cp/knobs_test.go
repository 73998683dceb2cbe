package main

import (
	"testing"

	"github.com/clawker/clawker-cp/pkg/debugknob"
)

// The knob names clawker-cp reads are the ones pkg/debugknob declares.
func TestKnobNames(t *testing.T) {
	for got, want := range map[string]*debugknob.Knob{
		debugFaultsEnv:    debugknob.Faults,
		debugHoldReadyEnv: debugknob.HoldReady,
		debugPinDirEnv:    debugknob.PinDir,
		debugNetworkEnv:   debugknob.Network,
		debugClockSkewEnv: debugknob.ClockSkew,
	} {
		if got != want.Name {
			t.Errorf("clawker-cp reads %s, pkg/debugknob declares %s", got, want.Name)
		}
	}
}
