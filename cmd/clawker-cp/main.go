// Command clawker-cp is the control plane: PID 1 of the
// clawker-controlplane container, and an ordinary process on a host for
// tests. Everything it needs comes from the XDG directories and
// settings.yaml; see the README.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"

	"github.com/clawker/clawker-cp/actors/cp"
	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/debugknob"
	"github.com/clawker/clawker-cp/pkg/logging"
	"github.com/clawker/clawker-cp/pkg/settings"
)

func main() {
	code := 0
	app := &cli.App{
		Name:  "clawker-cp",
		Usage: "the clawker control plane (normally started by `clawker controlplane up`)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "bind", Value: "127.0.0.1", Usage: "address the health port listens on (0.0.0.0 inside the container)"},
			&cli.StringFlag{Name: "ory-dir", EnvVars: []string{"CLAWKER_CP_ORY_DIR"},
				Usage: "directory of the hydra, kratos and oathkeeper binaries the CP supervises (empty: none, and the AdminService refuses every method but GetSystemTime)"},
		},
		Action: func(c *cli.Context) error {
			oryDir, err := absDir(c.String("ory-dir"))
			if err != nil {
				return fmt.Errorf("--ory-dir: %w", err)
			}
			code = run(c.Context, c.String("bind"), oryDir)
			return nil
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "clawker-cp:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// absDir makes dir ("" stays "") absolute against the working directory.
// The Ory servers run with their run directory as working directory, where a
// relative path to their binaries no longer leads to them.
func absDir(dir string) (string, error) {
	if dir == "" || filepath.IsAbs(dir) {
		return dir, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("%q is relative and the working directory is unknown: %w", dir, err)
	}
	return abs, nil
}

func run(parent context.Context, bind, oryDir string) int {
	paths, err := settings.ResolvePaths(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "clawker-cp:", err)
		return 1
	}
	log, closeLog, err := logging.New(logging.Options{Stderr: os.Stderr, File: paths.LogFile, Level: zapcore.InfoLevel})
	if err != nil {
		fmt.Fprintln(os.Stderr, "clawker-cp: opening the log:", err)
		return 1
	}
	defer func() { _ = closeLog() }()

	st, err := settings.Load(paths.SettingsFile)
	if err != nil {
		log.Error("invalid settings: "+err.Error(), zap.String("event", "settings_invalid"), zap.String("file", paths.SettingsFile))
		return 1
	}
	// The debug knobs (tests only, pkg/debugknob): each one set is logged.
	debugknob.LogSet(slog.New(zapslog.NewHandler(log.Core())), os.Getenv)
	faults := debugknob.Faults.On(os.Getenv)
	var hold time.Duration
	if v := debugknob.HoldReady.Get(); v != "" {
		if hold, err = time.ParseDuration(v); err != nil || hold < 0 {
			log.Error(debugknob.HoldReady.Name+": not a duration, e.g. 2s", zap.String("event", "debug_knob_invalid"), zap.String("value", v))
			return 1
		}
	}
	pinDir, network := debugknob.PinDir.Get(), debugknob.Network.Get()
	var systemClock func() time.Time
	if v := debugknob.ClockSkew.Get(); v != "" {
		skew, err := cpgrpc.ParseClockSkew(debugknob.ClockSkew.Name, v)
		if err != nil {
			log.Error(err.Error(), zap.String("event", "debug_knob_invalid"), zap.String("env", debugknob.ClockSkew.Name), zap.String("value", v))
			return 1
		}
		systemClock = skew.Clock(time.Now())
	}
	log.Info("clawker-cp starting", zap.String("event", "process_start"), zap.Int("pid", os.Getpid()),
		zap.String("settings", paths.SettingsFile), zap.String("data_dir", paths.DataDir), zap.String("log_file", paths.LogFile))

	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return cp.Run(ctx, cp.Options{Settings: st, Paths: paths, Log: log, BindHost: bind, DebugFaults: faults, HoldReady: hold,
		// PID 1 means we are the container's init: pins must land on the
		// host's bpffs bind-mounted at /sys/fs/bpf, never on a private one.
		PinDir: pinDir, Network: network, NoMount: os.Getpid() == 1, OryDir: oryDir, SystemClock: systemClock})
}
