package clawkercli

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// stateCommand is `clawker controlplane state`: the overseer's worldview,
// read from /debug/state through the control plane's Oathkeeper (see
// getDebug).
func stateCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:   "state",
		Usage:  "print the control plane's worldview: managed containers and agent sessions",
		Flags:  []cli.Flag{&cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"}},
		Action: func(c *cli.Context) error { return state(c, env) },
	}
}

func state(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{format: true, cp: true})
	if err != nil {
		return err
	}
	defer v.release()
	if err := v.ensureCP(c.Context); err != nil {
		return err
	}
	var st cpapi.WorldState
	body, err := getDebug(c.Context, v.paths, v.s, "/debug/state", &st)
	if err != nil {
		return err
	}
	if v.asJSON {
		// The CP's own JSON, untouched: fields this CLI does not know
		// survive.
		body = bytes.TrimRight(body, "\n")
		_, err := fmt.Fprintf(env.Stdout, "%s\n", body)
		return err
	}
	return writeState(env.Stdout, st)
}

// writeState renders the worldview as two tables.
func writeState(w io.Writer, st cpapi.WorldState) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINERS")
	fmt.Fprintln(tw, "ID\tNAME\tPURPOSE\tPROJECT\tAGENT\tSTATE\tEXIT\tSINCE")
	for _, c := range st.Containers {
		exit := "-"
		if c.State == cpapi.ContainerStopped && c.ExitCode != cpapi.ExitCodeUnknown {
			exit = strconv.Itoa(c.ExitCode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(shortID(c.ID)), orDash(c.Name), orDash(c.Purpose), orDash(c.Project),
			orDash(c.Agent), c.State, exit, stamp(c.Since))
	}
	if len(st.Containers) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSIONS")
	fmt.Fprintln(tw, "AGENT\tCONTAINER\tSTATE\tSINCE\tREASON")
	for _, s := range st.Sessions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Agent, orDash(shortID(s.ContainerID)), s.State, stamp(s.Since), orDash(oneLine(s.Reason)))
	}
	if len(st.Sessions) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	return tw.Flush()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
