package clawkercli

import "github.com/urfave/cli/v2"

// projectsFlag is --project of `firewall add` and `remove`: a rule scoped
// to projects applies to their agents only (the control plane checks the
// names).
func projectsFlag(usage string) cli.Flag {
	return &cli.StringSliceFlag{Name: "project", Usage: usage}
}
