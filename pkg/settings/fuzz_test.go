package settings

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the settings.yaml parser. Properties:
//   - it never panics;
//   - what it accepts passes Validate again (nothing invalid slips in
//     through the overlay);
//   - every rejection is an *Error, and one tied to a key names that key
//     in its message (the user can find what to fix); one tied to no key
//     is a problem of the whole document (syntax, several documents, a
//     root that is not a mapping) or about the empty key.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"control_plane:\n  admin_port: 8443\n  health_port: 7443\n",
		"firewall: {enable: false, proxy_port: 15002, upstream_dns: [\"192.0.2.53:53\"], private_destinations: [\"198.51.100.0/24\", \"203.0.113.7\"], agent_to_agent: project}\n",
		"control_plane:\n  supervisor: {max_restarts: 3, restart_window: 1m, drain_step_timeout: 1500ms, start_timeout: 10s}\n  watcher: {enable: true, poll_interval: &p 10s, grace: *p, zero_streak: 2}\n  sessions: {heartbeat: 5s, last_seen_flush: 5s}\n",
		"monitoring:\n  otlp_endpoint: http://127.0.0.1:4317\n  otlp_insecure: true\n  egress_events_per_second: 500\n",
		"agents:\n  pids_limit: 512\n  memory: 512m\n",
		"control_plane:\n  admin_port: \"8443\"\n",
		"control_plane:\n  admin_port: 1\n  admin_port: 2\n",
		"firewal:\n  enable: false\n",
		"a: 1\n---\nb: 2\n",
		"- 1\n- 2\n",
		"control_plane: [1, 2]\n",
		"control_plane:\n  watcher:\n    grace: 10\n",
		"firewall:\n  upstream_dns: [53, {a: b}]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// monitoring.otlp_ca may be a file path, which Validate reads as
		// the CP would: a device (/dev/zero, a tty) would hang or exhaust
		// the fuzzer, which says nothing about the parser.
		for _, dev := range []string{"/dev", "/proc", "/sys"} {
			if bytes.Contains(data, []byte(dev)) {
				t.Skip("names a device or kernel file")
			}
		}
		s, err := parse(data)
		if err == nil {
			if verr := s.Validate(); verr != nil {
				t.Fatalf("parse accepted settings that Validate refuses: %v\n%q", verr, data)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("rejection is %T, not *Error: %v", err, err)
		}
		if e.Msg == "" {
			t.Fatalf("rejection without a message: %+v", e)
		}
		if e.Key != "" {
			// Quoted (%q) where the key may hold anything.
			if !strings.Contains(e.Msg, e.Key) && !strings.Contains(e.Msg, strconv.Quote(e.Key)) {
				t.Fatalf("rejection for key %q does not name it: %q", e.Key, e.Msg)
			}
			return
		}
		// An empty key ("": 1) is named as such.
		for _, doc := range []string{"invalid YAML: ", "contains more than one YAML document", "the file must be a mapping", `unknown key ""`} {
			if strings.HasPrefix(e.Msg, doc) {
				return
			}
		}
		t.Fatalf("rejection names no key and is not about the whole document: %q", e.Msg)
	})
}
