package clawkercli

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/presets"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// presetFlag is `firewall add --preset NAME`.
func presetFlag() cli.Flag {
	return &cli.StringFlag{Name: "preset", Usage: "add the rules of a preset instead of one DST (list them: clawker firewall presets)"}
}

func presetsCommand() *cli.Command {
	return &cli.Command{
		Name:   "presets",
		Usage:  "list the rule presets `clawker firewall add --preset NAME` adds",
		Flags:  []cli.Flag{&cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"}},
		Action: firewallPresets,
	}
}

// PresetReport is one preset in `firewall presets --format json`.
type PresetReport struct {
	Name        string               `json:"name"`
	Description string               `json:"description"`
	Rules       []FirewallRuleReport `json:"rules"`
}

func firewallPresets(c *cli.Context) error {
	// No Env: the presets are compiled in and printed to the app's writer.
	v, err := prologue(c, Env{}, needs{format: true, noArgs: "firewall presets"})
	if err != nil {
		return err
	}
	var reps []PresetReport
	for _, p := range presets.All() {
		rep := PresetReport{Name: p.Name, Description: p.Description}
		for _, r := range presetRules(p) {
			rep.Rules = append(rep.Rules, ruleReport(r))
		}
		reps = append(reps, rep)
	}
	if v.asJSON {
		return writeJSON(c.App.Writer, reps)
	}
	return writePresets(c.App.Writer, reps)
}

// writePresets prints `firewall presets`, the preset's name on each of its
// rules so that a grep for it finds them all:
//
//	PRESET  DST                 PROTO  PORT  ACTION  DESCRIPTION
//	npm     registry.npmjs.org  https  443   allow   the npm registry
func writePresets(w io.Writer, reps []PresetReport) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PRESET\tDST\tPROTO\tPORT\tACTION\tDESCRIPTION")
	for _, p := range reps {
		for i, r := range p.Rules {
			desc := ""
			if i == 0 {
				desc = p.Description
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, r.Dst, r.Proto, r.Port, r.Action, desc)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Only a preset's first rule carries the description: the padding
	// tabwriter leaves before the others' empty cell goes.
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if line != "" {
			fmt.Fprintln(w, strings.TrimRight(line, " \n"))
		}
	}
	_, err := fmt.Fprintln(w, "Add one: clawker firewall add --preset NAME")
	return err
}

// presetRules is a preset as AdminService rules.
func presetRules(p presets.Preset) []*adminv1.EgressRule {
	out := make([]*adminv1.EgressRule, 0, len(p.Rules))
	for _, r := range p.Rules {
		out = append(out, egressRule(r))
	}
	return out
}

func egressRule(r egressrules.Rule) *adminv1.EgressRule {
	return &adminv1.EgressRule{Dst: r.Dst, Proto: string(r.Proto), Port: r.Port.String(), Action: string(r.Action)}
}

// addRequestRules is what `firewall add` sends: the one rule DST and its
// flags make, or with --preset the preset's rules, all in one batch.
// Mistakes are caught here, before the control plane is asked.
func addRequestRules(c *cli.Context, args []string) ([]*adminv1.EgressRule, error) {
	name := c.String("preset")
	if name == "" {
		switch {
		case len(args) == 0:
			return nil, fmt.Errorf("DST: required: the destination, e.g. example.com, .example.com or 10.0.0.0/8, or --preset NAME (%s)", fwAddUsage)
		case len(args) > 1:
			return nil, fmt.Errorf("firewall add takes one argument, DST, got %q (%s)", args, fwAddUsage)
		}
		// The control plane judges the rule: its message names each bad field.
		return []*adminv1.EgressRule{{Dst: args[0], Proto: c.String("proto"), Port: c.String("port"), Action: c.String("action")}}, nil
	}
	if len(args) > 0 || c.String("proto") != "" || c.String("port") != "" || c.String("action") != "" {
		return nil, fmt.Errorf("--preset: give either --preset or a rule (DST with --proto, --port and --action), not both (%s)", fwAddUsage)
	}
	p, ok := presets.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("--preset: %w", presets.UnknownError(name))
	}
	return presetRules(p), nil
}
