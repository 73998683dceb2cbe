package grpc_test

import (
	"strings"
	"testing"
	"time"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
)

const skewEnv = "CLAWKER_CP_DEBUG_CLOCK_SKEW"

func TestParseClockSkew(t *testing.T) {
	for _, c := range []struct {
		in   string
		want cpgrpc.ClockSkew
	}{
		{"-5s", cpgrpc.ClockSkew{Lag: -5 * time.Second}},
		{"-5s,2s", cpgrpc.ClockSkew{Lag: -5 * time.Second, CatchUpAfter: 2 * time.Second}},
		{" -1m30s , 500ms ", cpgrpc.ClockSkew{Lag: -90 * time.Second, CatchUpAfter: 500 * time.Millisecond}},
		{"3s", cpgrpc.ClockSkew{Lag: 3 * time.Second}},
		{"0s", cpgrpc.ClockSkew{}},
	} {
		got, err := cpgrpc.ParseClockSkew(skewEnv, c.in)
		if err != nil || got != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", ",2s", "soon", "-5", "-5s,", "-5s,later", "-5s,0s", "-5s,-1s", "-5s,2s,3s"} {
		_, err := cpgrpc.ParseClockSkew(skewEnv, bad)
		if err == nil {
			t.Errorf("%q: accepted", bad)
			continue
		}
		for _, part := range []string{skewEnv, "<lag>[,<catch-up-after>]", "-5s,2s"} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("%q: error %q does not name %q", bad, err, part)
			}
		}
	}
}

func TestClockSkewClock(t *testing.T) {
	start := time.Now()
	forever := cpgrpc.ClockSkew{Lag: -5 * time.Second}.Clock(start)
	if d := time.Since(forever()); d < 5*time.Second || d > 6*time.Second {
		t.Errorf("-5s: %s behind", d)
	}
	catch := cpgrpc.ClockSkew{Lag: -5 * time.Second, CatchUpAfter: 200 * time.Millisecond}.Clock(start)
	if d := time.Since(catch()); d < 5*time.Second {
		t.Errorf("-5s,200ms before the catch-up: %s behind", d)
	}
	time.Sleep(time.Until(start.Add(200 * time.Millisecond)))
	if d := time.Since(catch()); d < 0 || d > time.Second {
		t.Errorf("-5s,200ms after the catch-up: %s behind", d)
	}
	if s := (cpgrpc.ClockSkew{Lag: -5 * time.Second, CatchUpAfter: 2 * time.Second}).String(); s != "-5s,2s" {
		t.Errorf("String() = %q", s)
	}
}
