package logging

import (
	"slices"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const eventKey = "event"

// eventCore guarantees a top-level "event" field on every entry. When none
// was given (via With or on the call), it derives one from the message, so
// call sites only name events explicitly when the message is not stable.
//
// "Top-level" matters: fields after a zap.Namespace land inside it, so an
// "event" there does not count, and the derived event must not be appended
// after an open namespace either. For that case the core keeps the inner
// core as it was before the first namespace (top) plus the fields added
// since (nested), and writes through top with the event first.
type eventCore struct {
	zapcore.Core                 // inner core with all With fields applied
	top          zapcore.Core    // inner core before the first With namespace
	nested       []zapcore.Field // With fields from the first namespace on; empty if none
	hasEvent     bool            // With fields already set a top-level event
}

// withEvents wraps c, unless it already is an eventCore.
func withEvents(c zapcore.Core) zapcore.Core {
	if _, ok := c.(*eventCore); ok {
		return c
	}
	return &eventCore{Core: c, top: c}
}

func (c *eventCore) With(fields []zapcore.Field) zapcore.Core {
	out := &eventCore{Core: c.Core.With(fields), hasEvent: c.hasEvent}
	switch {
	case c.hasEvent:
		// Nothing more to track.
	case len(c.nested) > 0:
		// A namespace is already open: none of these fields is top-level.
		out.top = c.top
		out.nested = append(slices.Clip(c.nested), fields...)
	default:
		n, found := topLevelEvent(fields)
		switch {
		case found:
			out.hasEvent = true
		case n == len(fields):
			out.top = out.Core
		default:
			// fields opens a namespace at n: remember the core before it.
			out.top = c.Core.With(fields[:n])
			out.nested = slices.Clone(fields[n:])
		}
	}
	return out
}

// Check registers this core, not the inner one, so that Write below runs.
func (c *eventCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *eventCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if c.hasEvent {
		return c.Core.Write(ent, fields)
	}
	event := zap.String(eventKey, eventName(ent.Message))
	if len(c.nested) == 0 {
		if _, found := topLevelEvent(fields); found {
			return c.Core.Write(ent, fields)
		}
		// Prepend: a namespace among fields would swallow an appended event.
		return c.Core.Write(ent, append([]zapcore.Field{event}, fields...))
	}
	all := make([]zapcore.Field, 0, 1+len(c.nested)+len(fields))
	all = append(all, event)
	all = append(all, c.nested...)
	all = append(all, fields...)
	return c.top.Write(ent, all)
}

// Level lets zap.Logger.Level and zapcore.LevelOf see through the wrapper.
func (c *eventCore) Level() zapcore.Level {
	return zapcore.LevelOf(c.Core)
}

// topLevelEvent reports whether fields set "event" at the top level. n is
// the index of the first namespace, or len(fields) if there is none; it is
// only meaningful when found is false.
func topLevelEvent(fields []zapcore.Field) (n int, found bool) {
	for i, f := range fields {
		switch {
		case f.Type == zapcore.NamespaceType:
			return i, false
		case f.Key == eventKey && f.Type != zapcore.SkipType:
			return i, true
		}
	}
	return len(fields), false
}

// eventName turns a message into an event name: ASCII letters and digits are
// kept (lowercased) and every other run of bytes becomes one "_", trimmed at
// both ends. ASCII-only keeps names safe as index keys and predictable to
// query. "actor system started" -> "actor_system_started"; "" -> "log".
func eventName(msg string) string {
	var b strings.Builder
	b.Grow(len(msg))
	sep := false
	for i := 0; i < len(msg); i++ {
		ch := msg[i]
		switch {
		case 'a' <= ch && ch <= 'z', '0' <= ch && ch <= '9':
		case 'A' <= ch && ch <= 'Z':
			ch += 'a' - 'A'
		default:
			sep = true
			continue
		}
		if sep && b.Len() > 0 {
			b.WriteByte('_')
		}
		sep = false
		b.WriteByte(ch)
	}
	if b.Len() == 0 {
		return "log"
	}
	return b.String()
}
