// Command clawker-cp is the control plane: PID 1 of the
// clawker-controlplane container, and an ordinary process on a host for
// tests. Everything it needs comes from the XDG directories and
// settings.yaml; see the README.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/clawker/clawker-cp/actors/cp"
	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/logging"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// Debug knobs, for tests. Each is logged when set.
const (
	// debugFaultsEnv=1 enables POST /debug/faults on the health port.
	debugFaultsEnv = "CLAWKER_CP_DEBUG_FAULTS"
	// debugHoldReadyEnv=<duration> delays the ready declaration.
	debugHoldReadyEnv = "CLAWKER_CP_DEBUG_HOLD_READY"
	// debugPinDirEnv=<dir under /sys/fs/bpf> pins the eBPF state there
	// instead of /sys/fs/bpf/clawker, so tests do not share one.
	debugPinDirEnv = "CLAWKER_CP_DEBUG_PIN_DIR"
	// debugNetworkEnv=<name> is the agent network instead of clawker-net.
	debugNetworkEnv = "CLAWKER_CP_DEBUG_NETWORK"
	// debugClockSkewEnv=<lag>[,<catch-up-after>] skews the clock
	// GetSystemTime reports (only that): -5s is 5s behind forever, -5s,2s
	// until 2s after start. Drives the CLI's clock-sync gate in tests.
	debugClockSkewEnv = "CLAWKER_CP_DEBUG_CLOCK_SKEW"
	// debugLabelsEnv=k=v,... labels the firewall siblings (the CLI's knob
	// of the same name labels what it creates).
	debugLabelsEnv = "CLAWKER_DEBUG_LABELS"
)

// version is the release, set when building one:
// go build -ldflags "-X main.version=v0.4.0" ./cmd/clawker-cp
var version = "dev"

// versionText is `clawker-cp --version`: the release and the commit built
// from (clawker --version names the image that carries this binary).
func versionText() string {
	commit := "unknown (built without VCS information)"
	if info, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range info.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "-dirty"
			}
		}
		if rev != "" {
			commit = rev + dirty
		}
	}
	return "clawker-cp " + version + "\ncommit: " + commit + "\n"
}

func main() {
	code := 0
	app := &cli.App{
		Name:  "clawker-cp",
		Usage: "the clawker control plane (normally started by `clawker controlplane up`)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "bind", Value: "127.0.0.1", Usage: "address the health port listens on (0.0.0.0 inside the container)"},
			&cli.StringFlag{Name: "ory-dir", EnvVars: []string{"CLAWKER_CP_ORY_DIR"},
				Usage: "directory of the hydra, kratos and oathkeeper binaries the CP supervises (empty: none, and the AdminService refuses every method but GetSystemTime)"},
			&cli.StringFlag{Name: "stack-dir", EnvVars: []string{"CLAWKER_CP_STACK_DIR"},
				Usage: "directory of the clawker-dns and clawker-proxy binaries: with the firewall enabled the CP builds and runs the firewall stack from them (empty: it adopts a stack that already answers at .200/.201)"},
			&cli.StringFlag{Name: "host-proc", EnvVars: []string{"CLAWKER_CP_HOST_PROC"},
				Usage: "where the host's /proc is mounted (read-only), for a CP in a container: a bypass's end cuts the agent's sockets from inside its network namespace, entered through its init process there (empty: this process's /proc sees the agents)"},
			&cli.BoolFlag{Name: "version", Usage: "print the version and the commit, then exit"},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("version") {
				fmt.Print(versionText())
				return nil
			}
			stackDir := c.String("stack-dir")
			if stackDir != "" {
				abs, err := filepath.Abs(stackDir)
				if err != nil {
					return fmt.Errorf("--stack-dir %s: %w", stackDir, err)
				}
				stackDir = abs
			}
			code = run(c.Context, c.String("bind"), c.String("ory-dir"), stackDir, c.String("host-proc"))
			return nil
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "clawker-cp:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(parent context.Context, bind, oryDir, stackDir, hostProc string) int {
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
	logKnobs(log) // every debug knob set, one line each (pkg/debugknob)
	faults := os.Getenv(debugFaultsEnv) == "1"
	var hold time.Duration
	if v := os.Getenv(debugHoldReadyEnv); v != "" {
		if hold, err = time.ParseDuration(v); err != nil || hold < 0 {
			log.Error(debugHoldReadyEnv+": not a duration, e.g. 2s", zap.String("event", "debug_knob_invalid"), zap.String("value", v))
			return 1
		}
	}
	pinDir, network := os.Getenv(debugPinDirEnv), os.Getenv(debugNetworkEnv)
	var systemClock func() time.Time
	if v := os.Getenv(debugClockSkewEnv); v != "" {
		skew, err := cpgrpc.ParseClockSkew(debugClockSkewEnv, v)
		if err != nil {
			log.Error(err.Error(), zap.String("event", "debug_knob_invalid"), zap.String("env", debugClockSkewEnv), zap.String("value", v))
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
		PinDir: pinDir, Network: network, NoMount: os.Getpid() == 1, OryDir: oryDir, SystemClock: systemClock,
		StackDir: stackDir, HostProc: hostProc, SiblingLabels: siblingLabels(os.Getenv(debugLabelsEnv))})
}

// siblingLabels parses CLAWKER_DEBUG_LABELS (k=v,...): the labels the CLI
// puts on what it creates, put on the firewall siblings too so a test
// removes exactly what it made.
func siblingLabels(v string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(v, ",") {
		if k, val, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && k != "" {
			out[k] = val
		}
	}
	return out
}
