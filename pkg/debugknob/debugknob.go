// Package debugknob declares every CLAWKER_* debug knob in one place: its
// variable, what it does, and who reads it. The knobs exist for tests; a
// binary that sees one set says so (clawker-cp through LogSet, the CLI on
// stderr where it acts on it), so a knob left set by accident shows.
//
// Only the binaries' knobs are here. The variables the test helpers read
// (CLAWKER_ORY_DIR, CLAWKER_TEST_*) are declared beside those helpers.
//
// It imports only the standard library: clawkerd and the CLI may use it.
package debugknob

import (
	"log/slog"
	"os"
)

// Knob is one debug variable.
type Knob struct {
	// Name is the environment variable.
	Name string
	// Meaning says what setting it does, in one line.
	Meaning string
	// ToCP marks a knob of clawker-cp that the CLI passes into the control
	// plane container when it is set in the CLI's own environment.
	ToCP bool
}

var all []*Knob

func declare(k Knob) *Knob {
	all = append(all, &k)
	return &k
}

// The knobs.
var (
	Faults = declare(Knob{Name: "CLAWKER_CP_DEBUG_FAULTS",
		Meaning: "=1 enables POST /debug/faults?actor=<name>&kind=panic|block&duration=5s on the health port"})
	HoldReady = declare(Knob{Name: "CLAWKER_CP_DEBUG_HOLD_READY",
		Meaning: "=<duration> delays the ready declaration, so /healthz can be seen answering 503 first"})
	PinDir = declare(Knob{Name: "CLAWKER_CP_DEBUG_PIN_DIR",
		Meaning: "=<dir under /sys/fs/bpf> pins the eBPF state there instead of /sys/fs/bpf/clawker"})
	Network = declare(Knob{Name: "CLAWKER_CP_DEBUG_NETWORK",
		Meaning: "=<name> is the agent network instead of clawker-net"})
	ClockSkew = declare(Knob{Name: "CLAWKER_CP_DEBUG_CLOCK_SKEW",
		Meaning: "=<lag>[,<catch-up-after>] makes GetSystemTime answer that far behind (-5s; -5s,2s catches up 2s after start)",
		ToCP:    true})
	NoBootstrap = declare(Knob{Name: "CLAWKER_NO_BOOTSTRAP",
		Meaning: "=1 makes the CLI talk to whatever control plane answers instead of bringing the container up"})
	// ToCP: the containerized CP puts them on the firewall siblings it
	// creates, as a CP on the host does.
	Labels = declare(Knob{Name: "CLAWKER_DEBUG_LABELS",
		Meaning: "=k=v,... puts extra labels on everything the CLI creates",
		ToCP:    true})
)

// All returns every knob, in declaration order.
func All() []*Knob { return append([]*Knob(nil), all...) }

// Value is the knob's value as getenv sees it ("" when unset).
func (k *Knob) Value(getenv func(string) string) string { return getenv(k.Name) }

// Get is the knob's value in this process's environment.
func (k *Knob) Get() string { return k.Value(os.Getenv) }

// On reports whether the knob is set to 1 in getenv's environment.
func (k *Knob) On(getenv func(string) string) bool { return k.Value(getenv) == "1" }

// String is the variable's name.
func (k *Knob) String() string { return k.Name }

// LogSet logs one warning per knob set in getenv's environment (nil means
// the process's), with event=debug_knob, the variable, its value and its
// meaning. It returns how many were set.
func LogSet(log *slog.Logger, getenv func(string) string) int {
	if getenv == nil {
		getenv = os.Getenv
	}
	n := 0
	for _, k := range all {
		if v := k.Value(getenv); v != "" {
			n++
			log.Warn("debug knob set: "+k.Name, slog.String("event", "debug_knob"),
				slog.String("env", k.Name), slog.String("value", v), slog.String("meaning", k.Meaning))
		}
	}
	return n
}
