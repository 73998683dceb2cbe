package clawkercli

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/client"
	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

func downCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:  "down",
		Usage: "stop the control plane container; it runs its ordered drain first",
		Description: "Sends SIGTERM to clawker-cp, which drains in order (action queue, gRPC, bypass timers,\n" +
			"firewall stack, netlogger, DNS GC, eBPF) and exits 0. Docker waits at least 90s for that before\n" +
			"killing it. A control plane that does not run is not an error.\n" +
			"While agent containers run it refuses unless --force: the drain's last step flushes the eBPF\n" +
			"programs, which lifts egress enforcement from every running agent.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "stop it even though agent containers run (their egress is no longer enforced)"},
		},
		Action: func(c *cli.Context) error { return controlplaneDown(c, env) },
	}
}

func controlplaneDown(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{noArgs: "controlplane down", settings: true})
	if err != nil {
		return err
	}
	defer v.release()
	d, err := v.docker()
	if err != nil {
		return err
	}

	if err := checkNoAgents(c.Context, env, d, c.Bool("force")); err != nil {
		return err
	}
	res, err := cpboot.Stop(c.Context, cpboot.StopOptions{Settings: v.s, Paths: v.paths, Docker: d})
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

// checkNoAgents refuses to stop a running control plane while agent
// containers run, unless force: its drain ends by flushing the eBPF
// programs, and from then on nothing filters those agents' egress. With
// force it warns on stderr and lets the stop go on.
func checkNoAgents(ctx context.Context, env Env, d cpboot.Docker, force bool) error {
	st, err := cpboot.Inspect(ctx, d)
	if err != nil {
		return err
	}
	if !st.Running && !st.Restarting {
		return nil // nothing to stop: cpboot.Stop says so
	}
	agents, err := runningAgents(ctx, d)
	if err != nil {
		if force {
			fmt.Fprintf(env.Stderr, "warning: cannot tell whether agent containers run (%v); stopping anyway (--force)\n", err)
			return nil
		}
		return fmt.Errorf("cannot tell whether agent containers run, so the control plane was not stopped: %w; "+
			"pass --force to stop it anyway", err)
	}
	if len(agents) == 0 {
		return nil
	}
	names := make([]string, len(agents))
	for i, a := range agents {
		names[i] = a.name
	}
	why := fmt.Sprintf("stopping the control plane runs its drain, whose last step flushes the eBPF programs, "+
		"which lifts egress enforcement from the %d running agent container(s): %s", len(agents), strings.Join(names, ", "))
	if force {
		fmt.Fprintf(env.Stderr, "warning: %s (--force)\n", why)
		return nil
	}
	hint := "remove them first"
	if a := agents[0]; a.project != "" && a.agent != "" {
		hint += fmt.Sprintf(" (e.g. `clawker rm -f --project %s --agent %s`)", a.project, a.agent)
	} else {
		hint += " with `clawker rm -f`"
	}
	return fmt.Errorf("refusing to stop the control plane: %s; %s, or pass --force to stop it anyway", why, hint)
}

// runningAgent is a running agent container.
type runningAgent struct{ name, project, agent string }

// runningAgents lists the running containers labelled as clawker agents,
// sorted by name.
func runningAgents(ctx context.Context, d cpboot.Docker) ([]runningAgent, error) {
	f := dockerx.AgentFilter().Add("status", "running")
	res, err := dockerx.Call(ctx, dockerTimeout, func(ctx context.Context) (client.ContainerListResult, error) {
		return d.ContainerList(ctx, client.ContainerListOptions{Filters: f})
	})
	if err != nil {
		return nil, fmt.Errorf("listing agent containers: %w", err)
	}
	out := make([]runningAgent, 0, len(res.Items))
	for _, c := range res.Items {
		a := runningAgent{name: shortID(c.ID), project: c.Labels[dockerx.LabelProject], agent: c.Labels[dockerx.LabelAgent]}
		if len(c.Names) > 0 {
			a.name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}
