// Package logging builds clawker-cp's zap logger: JSON lines teed to stderr
// (what `docker logs` shows) and to a size-rotated file on the host, with an
// "event" field on every line so log queries can key on a stable name.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"
	"gopkg.in/natefinch/lumberjack.v2"
)

const (
	defaultMaxSizeMB  = 10
	defaultMaxBackups = 5
)

// Options configures New. The zero value yields a logger that discards
// everything at Info level.
type Options struct {
	Stderr     io.Writer     // usually os.Stderr; nil = none
	File       string        // path of the rotated log file; "" = no file
	Level      zapcore.Level // minimum level for both outputs
	MaxSizeMB  int           // rotate after this many megabytes; <= 0 means 10
	MaxBackups int           // rotated files to keep; <= 0 means 5
}

// New returns the logger and a close function that must be called before
// exit; it closes the log file. Writes are unbuffered, so nothing is lost if
// the process dies without calling it.
func New(opts Options) (*zap.Logger, func() error, error) {
	var cores []zapcore.Core
	if opts.Stderr != nil {
		// Lock: an arbitrary writer (os.Stderr included) is not safe for
		// concurrent writes of whole lines.
		cores = append(cores, newCore(zapcore.Lock(zapcore.AddSync(opts.Stderr)), opts.Level))
	}

	closeFn := func() error { return nil }
	if opts.File != "" {
		if err := prepareFile(opts.File); err != nil {
			return nil, nil, err
		}
		file := &lumberjack.Logger{
			Filename:   opts.File,
			MaxSize:    orDefault(opts.MaxSizeMB, defaultMaxSizeMB),
			MaxBackups: orDefault(opts.MaxBackups, defaultMaxBackups),
		}
		// lumberjack serializes writes itself.
		cores = append(cores, newCore(zapcore.AddSync(file), opts.Level))
		closeFn = file.Close
	}

	// Both cores share one level, so a single wrapper around the tee derives
	// the event once per entry without changing which outputs get written.
	core := withEvents(zapcore.NewTee(cores...))
	logger := zap.New(core, zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel))
	return logger, closeFn, nil
}

// SlogHandler bridges log/slog (used by protoactor-go) into l. Records are
// tagged component=protoactor and, like everything else, get an event field.
// slog levels map onto the nearest zap level at or below them (e.g. WARN+2
// is warn, DEBUG-4 is debug) and are filtered by l's level.
func SlogHandler(l *zap.Logger) slog.Handler {
	h := zapslog.NewHandler(withEvents(l.Core()),
		zapslog.WithName(l.Name()),
		zapslog.WithCaller(true), // the slog call site, i.e. inside protoactor
	)
	return h.WithAttrs([]slog.Attr{slog.String("component", "protoactor")})
}

// newCore builds one JSON output. The encoder is zap's production one except
// for human-readable ISO8601 timestamps instead of epoch floats.
func newCore(ws zapcore.WriteSyncer, level zapcore.Level) zapcore.Core {
	cfg := zap.NewProductionEncoderConfig()
	cfg.EncodeTime = zapcore.ISO8601TimeEncoder
	return zapcore.NewCore(zapcore.NewJSONEncoder(cfg), ws, level)
}

// prepareFile creates the log directory (0700: logs may hold agent and
// container identifiers) and the file (0600) up front. lumberjack would
// create them lazily on first write, but with a 0755 directory, and an
// unwritable path would only surface as lost lines; failing here makes a
// misconfigured path a startup error.
func prepareFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening log file: %w", err)
	}
	return f.Close()
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}
