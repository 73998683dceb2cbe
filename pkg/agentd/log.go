package agentd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"google.golang.org/grpc/grpclog"
)

// NewLogger is clawkerd's logger: one JSON object per line.
func NewLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, nil))
}

// eventLog makes the event attribute impossible to forget: every line
// clawkerd writes goes through one of these methods.
type eventLog struct{ l *slog.Logger }

func (e eventLog) at(level slog.Level, event, msg string, args ...any) {
	e.l.Log(context.Background(), level, msg, append([]any{"event", event}, args...)...)
}

func (e eventLog) debug(event, msg string, args ...any) { e.at(slog.LevelDebug, event, msg, args...) }
func (e eventLog) info(event, msg string, args ...any)  { e.at(slog.LevelInfo, event, msg, args...) }
func (e eventLog) warn(event, msg string, args ...any)  { e.at(slog.LevelWarn, event, msg, args...) }
func (e eventLog) error(event, msg string, args ...any) { e.at(slog.LevelError, event, msg, args...) }

// grpcLogger routes gRPC's own error lines into the JSON log (event
// grpc_error) so stderr stays one JSON object per line. Info and warning
// lines are dropped: they repeat what clawkerd logs about its connection.
type grpcLogger struct{ log eventLog }

// SetGRPCLogger installs grpcLogger. gRPC's logger is global and must be set
// before any gRPC call, so only main calls this, first thing.
func SetGRPCLogger(l *slog.Logger) { grpclog.SetLoggerV2(grpcLogger{eventLog{l}}) }

func (grpcLogger) Info(...any)             {}
func (grpcLogger) Infoln(...any)           {}
func (grpcLogger) Infof(string, ...any)    {}
func (grpcLogger) Warning(...any)          {}
func (grpcLogger) Warningln(...any)        {}
func (grpcLogger) Warningf(string, ...any) {}
func (g grpcLogger) Error(args ...any)     { g.log.error("grpc_error", fmt.Sprint(args...)) }
func (g grpcLogger) Errorln(args ...any)   { g.log.error("grpc_error", fmt.Sprint(args...)) }
func (g grpcLogger) Errorf(format string, args ...any) {
	g.log.error("grpc_error", fmt.Sprintf(format, args...))
}
func (g grpcLogger) Fatal(args ...any) {
	g.log.error("grpc_fatal", fmt.Sprint(args...))
	os.Exit(ExitFailure)
}
func (g grpcLogger) Fatalln(args ...any) {
	g.log.error("grpc_fatal", fmt.Sprint(args...))
	os.Exit(ExitFailure)
}
func (g grpcLogger) Fatalf(format string, args ...any) {
	g.log.error("grpc_fatal", fmt.Sprintf(format, args...))
	os.Exit(ExitFailure)
}
func (grpcLogger) V(int) bool { return false }
