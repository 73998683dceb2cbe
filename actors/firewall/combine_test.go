package firewall

import (
	"testing"

	"github.com/clawker/clawker-cp/actors/supervise"
)

func TestCombine(t *testing.T) {
	t.Parallel()
	sd := func(outcome, detail string) *supervise.StepDone {
		return &supervise.StepDone{Outcome: outcome, Detail: detail}
	}
	cases := []struct {
		name            string
		in              []*supervise.StepDone
		outcome, detail string
	}{
		{"none", nil, supervise.OutcomeNothing, ""},
		{"all nothing", []*supervise.StepDone{sd("nothing", "a"), sd("nothing", "b")}, supervise.OutcomeNothing, "a; b"},
		{"some done", []*supervise.StepDone{sd("nothing", "a"), sd("done", "b")}, supervise.OutcomeDone, "a; b"},
		{"failed wins over done", []*supervise.StepDone{sd("done", "a"), sd("failed", "b")}, supervise.OutcomeFailed, "a; b"},
		{"failed first stays failed", []*supervise.StepDone{sd("failed", "a"), sd("done", "b")}, supervise.OutcomeFailed, "a; b"},
		{"timeout counts as failed", []*supervise.StepDone{sd("timeout", "a"), sd("nothing", "b")}, supervise.OutcomeFailed, "a; b"},
	}
	for _, c := range cases {
		o, d := combine(c.in)
		if o != c.outcome || d != c.detail {
			t.Errorf("%s: combine = %s %q, want %s %q", c.name, o, d, c.outcome, c.detail)
		}
	}
}
