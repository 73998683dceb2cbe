package debugknob

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func TestKnobsAreDeclaredOnce(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range All() {
		if !strings.HasPrefix(k.Name, "CLAWKER_") || k.Meaning == "" {
			t.Errorf("knob %+v: want a CLAWKER_ name and a meaning", *k)
		}
		if seen[k.Name] {
			t.Errorf("knob %s declared twice", k.Name)
		}
		seen[k.Name] = true
	}
}

func TestLogSet(t *testing.T) {
	env := map[string]string{Faults.Name: "1", ClockSkew.Name: "-5s", "CLAWKER_UNRELATED": "x"}
	var buf bytes.Buffer
	n := LogSet(slog.New(slog.NewJSONHandler(&buf, nil)), func(k string) string { return env[k] })
	if n != 2 {
		t.Fatalf("LogSet counted %d knobs, want 2", n)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		if m["event"] != "debug_knob" || m["level"] != "WARN" || m["meaning"] == "" {
			t.Errorf("line %s", line)
		}
		got = append(got, m["env"].(string)+"="+m["value"].(string))
	}
	if strings.Join(got, " ") != "CLAWKER_CP_DEBUG_FAULTS=1 CLAWKER_CP_DEBUG_CLOCK_SKEW=-5s" {
		t.Errorf("logged %q", got)
	}
	if !Faults.On(func(k string) string { return env[k] }) || HoldReady.On(func(k string) string { return env[k] }) {
		t.Error("On")
	}
}
