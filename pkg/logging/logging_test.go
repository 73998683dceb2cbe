package logging

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newBuffered returns a logger writing to a buffer, and a func that parses
// what was written so far, one JSON object per line.
func newBuffered(t *testing.T, level zapcore.Level) (*zap.Logger, func() []map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	l, closeFn, err := New(Options{Stderr: &buf, Level: level})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closeFn() })
	return l, func() []map[string]any { return parseLines(t, buf.Bytes()) }
}

func parseLines(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if n := topLevelEvents(t, line); n != 1 {
			t.Errorf("line has %d top-level event keys: %s", n, line)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line is not JSON: %v: %s", err, line)
		}
		out = append(out, m)
	}
	return out
}

// topLevelEvents counts "event" keys of the line's outer object; unlike
// json.Unmarshal into a map, it sees duplicates.
func topLevelEvents(t *testing.T, line string) int {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	n, depth, wantKey := 0, 0, false
	for {
		tok, err := dec.Token()
		if err != nil {
			return n
		}
		switch tok := tok.(type) {
		case json.Delim:
			if tok == '{' || tok == '[' {
				depth++
			} else {
				depth--
			}
			wantKey = depth == 1
			continue
		case string:
			if depth == 1 && wantKey && tok == "event" {
				n++
			}
		}
		if depth == 1 {
			wantKey = !wantKey
		}
	}
}

func only(t *testing.T, lines []map[string]any) map[string]any {
	t.Helper()
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1: %v", len(lines), lines)
	}
	return lines[0]
}

func TestEventName(t *testing.T) {
	tests := map[string]string{
		"actor system started":          "actor_system_started",
		"Actor System Started":          "actor_system_started",
		"  --leading, trailing!! ":      "leading_trailing",
		"gRPC: listen on :7443 failed.": "grpc_listen_on_7443_failed",
		"café ouvert":                   "caf_ouvert",
		"":                              "log",
		"!!!":                           "log",
	}
	for in, want := range tests {
		if got := eventName(in); got != want {
			t.Errorf("eventName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLineFormat(t *testing.T) {
	l, lines := newBuffered(t, zapcore.InfoLevel)
	l.Info("actor system started", zap.Int("actors", 3))

	m := only(t, lines())
	if m["event"] != "actor_system_started" || m["msg"] != "actor system started" ||
		m["level"] != "info" || m["actors"] != float64(3) {
		t.Errorf("unexpected line: %v", m)
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000Z0700", m["ts"].(string)); err != nil {
		t.Errorf("ts is not ISO8601: %v", err)
	}
	if c, _ := m["caller"].(string); !strings.Contains(c, "logging_test.go") {
		t.Errorf("caller = %q, want this file", c)
	}
}

func TestEventField(t *testing.T) {
	tests := []struct {
		name string
		log  func(l *zap.Logger)
		want string
		// check is an extra assertion on the line.
		check func(t *testing.T, m map[string]any)
	}{
		{
			name: "derived from message",
			log:  func(l *zap.Logger) { l.Warn("Disk almost full") },
			want: "disk_almost_full",
		},
		{
			name: "explicit field kept",
			log:  func(l *zap.Logger) { l.Info("some message", zap.String("event", "custom")) },
			want: "custom",
		},
		{
			name: "With field respected",
			log:  func(l *zap.Logger) { l.With(zap.String("event", "from_with")).Info("some message") },
			want: "from_with",
		},
		{
			name: "With field survives further With",
			log: func(l *zap.Logger) {
				l.With(zap.String("event", "from_with")).With(zap.String("k", "v")).Info("some message")
			},
			want: "from_with",
		},
		{
			name: "With without event still derives",
			log:  func(l *zap.Logger) { l.With(zap.String("k", "v")).Named("n").Info("child said hi") },
			want: "child_said_hi",
		},
		{
			name: "event with WithLazy",
			log:  func(l *zap.Logger) { l.WithLazy(zap.String("event", "lazy")).Info("some message") },
			want: "lazy",
		},
		{
			name: "top level despite entry namespace",
			log:  func(l *zap.Logger) { l.Info("request done", zap.Namespace("req"), zap.String("id", "1")) },
			want: "request_done",
			check: func(t *testing.T, m map[string]any) {
				if req, _ := m["req"].(map[string]any); req["id"] != "1" {
					t.Errorf("req = %v", m["req"])
				}
			},
		},
		{
			name: "top level despite With namespace",
			log: func(l *zap.Logger) {
				l.With(zap.String("a", "1"), zap.Namespace("req"), zap.String("id", "1")).
					With(zap.String("more", "x")).
					Info("request done", zap.String("code", "ok"))
			},
			want: "request_done",
			check: func(t *testing.T, m map[string]any) {
				req, _ := m["req"].(map[string]any)
				if m["a"] != "1" || req["id"] != "1" || req["more"] != "x" || req["code"] != "ok" {
					t.Errorf("fields misplaced: %v", m)
				}
			},
		},
		{
			name: "event inside a namespace does not count",
			log:  func(l *zap.Logger) { l.Info("outer", zap.Namespace("n"), zap.String("event", "inner")) },
			want: "outer",
			check: func(t *testing.T, m map[string]any) {
				if n, _ := m["n"].(map[string]any); n["event"] != "inner" {
					t.Errorf("n = %v", m["n"])
				}
			},
		},
		{
			name: "With event before namespace counts",
			log: func(l *zap.Logger) {
				l.With(zap.String("event", "outer"), zap.Namespace("n")).Info("message")
			},
			want: "outer",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, lines := newBuffered(t, zapcore.InfoLevel)
			tt.log(l)
			m := only(t, lines())
			if m["event"] != tt.want {
				t.Errorf("event = %v, want %q in %v", m["event"], tt.want, m)
			}
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}
}

func TestLevelFiltering(t *testing.T) {
	l, lines := newBuffered(t, zapcore.WarnLevel)
	l.Info("dropped")
	l.With(zap.String("event", "x")).Debug("dropped too")
	l.Error("kept")
	m := only(t, lines())
	if m["event"] != "kept" || m["level"] != "error" {
		t.Errorf("got %v", m)
	}
	if _, ok := m["stacktrace"]; !ok {
		t.Error("error lines should carry a stacktrace")
	}
	if got := l.Level(); got != zapcore.WarnLevel {
		t.Errorf("Level() = %v, want warn", got)
	}
}

func TestNoOutputs(t *testing.T) {
	l, closeFn, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Info("goes nowhere")
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
}

func TestFileOutput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "logs")
	path := filepath.Join(dir, "cp.log")
	var stderr bytes.Buffer
	l, closeFn, err := New(Options{Stderr: &stderr, File: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Info("written to both")
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}

	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %v, want %v", p, got, want)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string][]byte{"file": data, "stderr": stderr.Bytes()} {
		if m := only(t, parseLines(t, out)); m["event"] != "written_to_both" {
			t.Errorf("%s: got %v", name, m)
		}
	}
}

func TestFileOpenFailsEarly(t *testing.T) {
	// A regular file where the log directory should be.
	blocker := filepath.Join(t.TempDir(), "blocker")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := New(Options{File: filepath.Join(blocker, "cp.log")}); err == nil {
		t.Fatal("expected an error for an unusable log path")
	}
}

func TestFileRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cp.log")
	l, closeFn, err := New(Options{File: path, MaxSizeMB: 1, MaxBackups: 2})
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 1024)
	for range 1200 { // ~1.3 MB of lines: more than one 1 MB file
		l.Info("filler", zap.String("pad", pad))
	}
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}

	backups, err := filepath.Glob(filepath.Join(dir, "cp-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(backups) != 1 {
		t.Fatalf("backups = %v, want exactly one", backups)
	}
	for _, p := range append(backups, path) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 1<<20 {
			t.Errorf("%s is %d bytes, over the 1 MB limit", p, fi.Size())
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", p, fi.Mode().Perm())
		}
	}
}

func TestSlogHandler(t *testing.T) {
	l, lines := newBuffered(t, zapcore.InfoLevel)
	sl := slog.New(SlogHandler(l))

	sl.Debug("too chatty")                                     // below Info: dropped
	sl.Info("Actor started", "pid", "nonhost/$1")              // derived event
	sl.Warn("mailbox full", "event", "mailbox_overflow")       // explicit event kept
	sl.WithGroup("g").Error("actor crashed", "reason", "boom") // group opens a namespace
	sl.Log(t.Context(), slog.LevelWarn+2, "between levels")

	got := lines()
	want := []struct{ level, event string }{
		{"info", "actor_started"},
		{"warn", "mailbox_overflow"},
		{"error", "actor_crashed"},
		{"warn", "between_levels"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		m := got[i]
		if m["level"] != w.level || m["event"] != w.event || m["component"] != "protoactor" {
			t.Errorf("line %d = %v, want level %s event %s component protoactor", i, m, w.level, w.event)
		}
	}
	if got[0]["pid"] != "nonhost/$1" {
		t.Errorf("attrs lost: %v", got[0])
	}
	if g, _ := got[2]["g"].(map[string]any); g["reason"] != "boom" {
		t.Errorf("group lost: %v", got[2])
	}
	if c, _ := got[0]["caller"].(string); !strings.Contains(c, "logging_test.go") {
		t.Errorf("caller = %q, want the slog call site", c)
	}
}

func TestTopLevelEventsHelper(t *testing.T) {
	if n := topLevelEvents(t, `{"event":"a","x":{"event":"b","l":[{"event":1}]},"y":["event"],"event":"c"}`); n != 2 {
		t.Fatalf("counted %d, want 2", n)
	}
}
