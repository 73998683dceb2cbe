// Package clawkercli is the clawker command line: the break-glass verbs of
// the control plane. cmd/clawker is a thin main around App.
package clawkercli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/debugknob"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// Env is what the commands read from and write to; tests replace it.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Docker connects to the Docker daemon; nil means the real one
	// (DOCKER_HOST, else the local socket).
	Docker func() (cpboot.Docker, error)
	// Bootstrap brings the control plane up before the verbs that need it
	// (run, controlplane agents/tree/state); DefaultEnv sets
	// cpboot.EnsureRunning. nil skips it: those verbs then talk to
	// whatever answers on the configured ports (in-process tests).
	Bootstrap func(context.Context, cpboot.Options) (cpboot.Result, error)
	// ClockGate is the clock-sync gate `clawker run` passes, once the
	// control plane is up, before it starts an agent container; DefaultEnv
	// sets one with the defaults. nil skips it (in-process tests without
	// an AdminService).
	ClockGate *ClockGate
	// AskFirewall makes `controlplane status` and `up` add the firewall's
	// state from the AdminService once /healthz is green; DefaultEnv sets
	// it. Off in tests whose fakes have no AdminService.
	AskFirewall bool
}

// docker returns a Docker client and a function that releases it.
func (env Env) docker() (cpboot.Docker, func(), error) {
	if env.Docker != nil {
		d, err := env.Docker()
		if err != nil {
			return nil, nil, err
		}
		release := func() {}
		if c, ok := d.(io.Closer); ok {
			release = func() { _ = c.Close() }
		}
		return d, release, nil
	}
	c, err := dockerx.New("")
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to Docker: %w", err)
	}
	return c, func() { _ = c.Close() }, nil
}

// App returns the clawker CLI.
func App(env Env) *cli.App {
	formatFlag := &cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"}
	return finishApp(env, &cli.App{
		Name:      "clawker",
		Usage:     "run AI coding agents in boxed-in containers",
		Writer:    env.Stdout,
		ErrWriter: env.Stderr,
		// Errors are printed once, by Run, to stderr.
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{{
			Name:    "controlplane",
			Aliases: []string{"cp"},
			Usage:   "break-glass verbs for the control plane",
			Subcommands: []*cli.Command{
				upCommand(env),
				downCommand(env),
				{
					Name:   "status",
					Usage:  "show whether the control plane container runs and is healthy",
					Flags:  []cli.Flag{formatFlag},
					Action: func(c *cli.Context) error { return statusWithImage(c, env) },
				},
				{
					Name:   "tree",
					Usage:  "print the control plane's live actor tree",
					Flags:  []cli.Flag{formatFlag},
					Action: func(c *cli.Context) error { return tree(c, env) },
				},
				{
					Name:   "agents",
					Usage:  "list the agents registered with the control plane",
					Flags:  []cli.Flag{formatFlag},
					Action: func(c *cli.Context) error { return agents(c, env) },
				},
				stateCommand(env),
			},
		}, authCommand(env),
			runCommand(env),
			rmCommand(env),
			firewallCommand(env),
			psCommand(env),
			completionCommand(),
		},
	})
}

// Run runs the CLI with args and returns the process exit code. Errors go to
// stderr, prefixed with the program name.
func Run(env Env, args []string) int {
	if err := App(env).Run(args); err != nil {
		fmt.Fprintln(env.Stderr, "clawker:", err)
		return 1
	}
	return 0
}

// DefaultEnv is the real process environment.
//
// CLAWKER_NO_BOOTSTRAP=1 (a debug knob, announced on stderr) makes the verbs
// talk to whatever control plane answers instead of bringing the container
// up first: tests run clawker-cp as a host process.
func DefaultEnv() Env {
	env := Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Bootstrap: cpboot.EnsureRunning, ClockGate: &ClockGate{}, AskFirewall: true}
	if debugknob.NoBootstrap.On(os.Getenv) {
		fmt.Fprintln(os.Stderr, "clawker: "+NoBootstrapEnv+"=1: not bringing the control plane up")
		env.Bootstrap = nil
	}
	return env
}

// NoBootstrapEnv names the debug knob that turns the transparent bootstrap off.
var NoBootstrapEnv = debugknob.NoBootstrap.Name

func loadPathsSettings(env Env) (settings.Paths, settings.Settings, error) {
	paths, err := settings.ResolvePaths(env.Getenv)
	if err != nil {
		return settings.Paths{}, settings.Settings{}, err
	}
	s, err := settings.Load(paths.SettingsFile)
	return paths, s, err
}

// healthBase is the CP's health port as seen from the host.
func healthBase(s settings.Settings) string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ControlPlane.HealthPort))
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

func checkFormat(c *cli.Context) (bool, error) {
	switch f := c.String("format"); f {
	case "text":
		return false, nil
	case "json":
		return true, nil
	default:
		return false, fmt.Errorf("--format: unknown format %q; use text or json", f)
	}
}
