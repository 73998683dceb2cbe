package cpboot

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// logScanLines is how far back an exit report looks for the error that
// ended the control plane: its shutdown writes several lines after it.
const logScanLines = 200

// exitSummary reads the end of the container's log and keeps what explains
// an exit: the last error lines (a failed start logs its cause, then stops
// its subsystems one line each), then the last LogTailLines lines.
func exitSummary(ctx context.Context, d Docker, id string) string {
	tail, err := logTail(ctx, d, id, logScanLines)
	if err != nil && tail == "" {
		return "(reading its log failed: " + err.Error() + ")"
	}
	return summarizeLog(strings.Split(tail, "\n"), LogTailLines)
}

func summarizeLog(lines []string, last int) string {
	var kept []string
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			kept = append(kept, l)
		}
	}
	lines = kept
	cut := max(0, len(lines)-last)
	var errs []string
	for _, l := range lines[:cut] {
		if isErrorLine(l) {
			errs = append(errs, l)
		}
	}
	if len(errs) > 2 {
		errs = errs[len(errs)-2:]
	}
	var out []string
	for _, l := range errs {
		out = append(out, renderLogLine(l))
	}
	if len(errs) > 0 {
		out = append(out, "…")
	}
	for _, l := range lines[cut:] {
		out = append(out, renderLogLine(l))
	}
	return strings.Join(out, "\n")
}

// isErrorLine: a JSON line at level error or worse, or a line that is not
// JSON at all (a panic's trace, a message printed before logging began).
func isErrorLine(l string) bool {
	var m map[string]any
	if json.Unmarshal([]byte(l), &m) != nil {
		return true
	}
	switch m["level"] {
	case "error", "dpanic", "panic", "fatal":
		return true
	}
	return false
}

// renderLogLine shortens a JSON log line to "level: msg: error (k=v, ...)";
// other lines are kept as they are.
func renderLogLine(l string) string {
	var m map[string]any
	if json.Unmarshal([]byte(l), &m) != nil {
		return l
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%v: %v", m["level"], m["msg"])
	if e, ok := m["error"]; ok {
		fmt.Fprintf(&b, ": %v", e)
	}
	var keys []string
	for k := range m {
		switch k {
		case "level", "ts", "caller", "msg", "error", "stacktrace", "actor":
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%v", k, m[k])
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	return b.String()
}
