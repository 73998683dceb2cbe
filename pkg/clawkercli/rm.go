package clawkercli

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/agentrun"
)

const rmUsage = "clawker rm [-f] [--project P] --agent NAME"

func rmCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:  "rm",
		Usage: "remove an agent container",
		Description: "Removes container clawker.<project>.<agent> (and its anonymous volumes). A running agent is\n" +
			"refused unless -f, which kills it. The control plane drops the agent's registry row when Docker\n" +
			"reports the container destroyed. The project defaults to the current directory's name.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "kill a running agent and remove it"},
			&cli.StringFlag{Name: "project", Usage: "project name (default: the current directory's name, made valid)"},
			&cli.StringFlag{Name: "agent", Usage: "agent name (required)"},
		},
		Action: func(c *cli.Context) error { return rmAgent(c, env) },
	}
}

func rmAgent(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{args: func() error {
		if c.NArg() > 0 {
			return fmt.Errorf("rm takes no arguments, got %q (%s)", c.Args().Slice(), rmUsage)
		}
		return nil
	}, names: rmUsage})
	if err != nil {
		return err
	}
	defer v.release()
	project, agent := v.project, v.agent
	d, err := v.docker()
	if err != nil {
		return err
	}
	ad, ok := d.(agentrun.Docker)
	if !ok {
		return fmt.Errorf("the Docker client (%T) cannot remove agent containers", d)
	}
	// No bootstrap: removing an agent needs Docker only, and a control
	// plane brought up now would have nothing left to supervise.
	res, err := agentrun.Remove(c.Context, ad, project, agent, c.Bool("force"))
	switch {
	case errors.Is(err, agentrun.ErrRunning):
		return fmt.Errorf("%w; `clawker rm -f --project %s --agent %s` kills and removes it (its command gets no grace), "+
			"or stop it first with `docker stop %s`", err, project, agent, res.Name)
	case errors.Is(err, agentrun.ErrNotFound):
		return fmt.Errorf("%w (project %s, agent %s)", err, project, agent)
	case err != nil:
		return err
	}
	_, err = fmt.Fprintln(env.Stdout, res.Name)
	return err
}
