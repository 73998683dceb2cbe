package clawkercli

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/settings"
)

func downCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:  "down",
		Usage: "stop the control plane container; it runs its ordered drain first",
		Description: "Sends SIGTERM to clawker-cp, which drains in order (action queue, gRPC, bypass timers,\n" +
			"firewall stack, netlogger, DNS GC, eBPF) and exits 0. Docker waits at least 90s for that before\n" +
			"killing it. A control plane that does not run is not an error.",
		Action: func(c *cli.Context) error { return controlplaneDown(c, env) },
	}
}

func controlplaneDown(c *cli.Context, env Env) error {
	if c.NArg() > 0 {
		return fmt.Errorf("controlplane down takes no arguments, got %q", c.Args().Slice())
	}
	paths, err := settings.ResolvePaths(env.Getenv)
	if err != nil {
		return err
	}
	s, err := settings.Load(paths.SettingsFile)
	if err != nil {
		return err
	}
	d, release, err := env.docker()
	if err != nil {
		return err
	}
	defer release()

	res, err := cpboot.Stop(c.Context, cpboot.StopOptions{Settings: s, Paths: paths, Docker: d})
	if err != nil {
		return err
	}
	if !res.WasRunning {
		fmt.Fprintln(env.Stdout, "control plane not running")
		return nil
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("the control plane exited with code %d after %s instead of draining to exit 0; see `docker logs %s`",
			res.ExitCode, res.Duration.Round(time.Millisecond), cpboot.ContainerName)
	}
	fmt.Fprintf(env.Stdout, "control plane stopped (drained in %s, exit 0)\n", res.Duration.Round(time.Millisecond))
	return nil
}
