package clawkercli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// DeniedReport is one group of `firewall denied --format json`.
type DeniedReport struct {
	Where  string    `json:"where"`
	Name   string    `json:"name"`
	Proto  string    `json:"proto,omitempty"`
	Method string    `json:"method,omitempty"` // where=path: the refused request
	Path   string    `json:"path,omitempty"`
	Count  int       `json:"count"`
	Agents []string  `json:"agents"`
	First  time.Time `json:"first"`
	Last   time.Time `json:"last"`
	Reason string    `json:"reason"`
	Allow  string    `json:"allow"`
}

func deniedCommand(env Env, format cli.Flag) *cli.Command {
	return &cli.Command{
		Name:  "denied",
		Usage: "what the firewall refused recently (DNS names, proxy connections), grouped, with the command that would allow each",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "agent", Usage: "only this agent's refusals"},
			&cli.StringFlag{Name: "project", Usage: "only this project's refusals"},
			&cli.DurationFlag{Name: "since", Value: 10 * time.Minute, Usage: "how far back (0: everything the control plane keeps)"},
			format,
		},
		Action: func(c *cli.Context) error { return firewallDenied(c, env) },
	}
}

func firewallDenied(c *cli.Context, env Env) error {
	since := c.Duration("since")
	checkArgs := func() error {
		if since < 0 {
			return fmt.Errorf("--since %s: give how far back, e.g. 10m", since)
		}
		return nil
	}
	req := &adminv1.FirewallDeniedRequest{Agent: c.String("agent"), Project: c.String("project")}
	if since > 0 {
		req.Since = durationpb.New(since)
	}
	return firewallCall(c, env, needs{format: true, noArgs: "firewall denied", args: checkArgs}, func(ctx context.Context, v *verb, cl *adminclient.Client) error {
		resp, err := cl.FirewallDenied(ctx, req)
		if err != nil {
			return rpcError("firewall denied", cl.Addr(), err)
		}
		groups := make([]DeniedReport, 0, len(resp.GetGroups()))
		for _, g := range resp.GetGroups() {
			groups = append(groups, DeniedReport{
				Where: g.GetWhere(), Name: g.GetName(), Proto: g.GetProto(), Count: int(g.GetCount()),
				Agents: append([]string{}, g.GetAgents()...), First: g.GetFirst().AsTime().UTC(), Last: g.GetLast().AsTime().UTC(),
				Reason: g.GetReason(), Allow: g.GetAllow(), Method: g.GetMethod(), Path: g.GetPath(),
			})
		}
		if v.asJSON {
			return writeJSON(env.Stdout, groups)
		}
		return writeDenied(env.Stdout, groups, since)
	})
}

// writeDenied prints `firewall denied`:
//
//	NAME               WHERE  COUNT  AGENTS     LAST                  ALLOW WITH
//	registry.npmjs.org dns    12     myapp/dev  2026-12-03T08:01:02Z  clawker firewall add registry.npmjs.org
func writeDenied(w io.Writer, groups []DeniedReport, since time.Duration) error {
	if len(groups) == 0 {
		window := "in the window the control plane keeps"
		if since > 0 {
			window = "in the last " + since.String()
		}
		_, err := fmt.Fprintf(w, "Nothing refused %s.\n", window)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tWHERE\tCOUNT\tAGENTS\tLAST\tALLOW WITH")
	for _, g := range groups {
		where := g.Where
		if g.Proto != "" {
			where += "/" + g.Proto
		}
		name := g.Name
		if name == "" {
			name = "(no name: " + g.Reason + ")"
		}
		if g.Where == "path" {
			name += " " + g.Method + " " + g.Path
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", name, where, g.Count, strings.Join(g.Agents, ","), g.Last.Format(time.RFC3339), g.Allow)
	}
	return tw.Flush()
}
