package clawkercli

import "github.com/urfave/cli/v2"

// finishApp adds what belongs to the whole CLI rather than to one verb:
// --version, shell completion, and the completion of agent names on
// every --agent flag.
func finishApp(env Env, app *cli.App) *cli.App {
	app.EnableBashCompletion = true
	// Our own flag rather than urfave's: its version printer is a package
	// variable, and ours hashes the embedded binaries, which only
	// --version should pay for.
	app.Flags = append(app.Flags, &cli.BoolFlag{Name: "version", Usage: "print the version, the commit and the control plane image this clawker runs"})
	app.Action = func(c *cli.Context) error {
		if c.Bool("version") {
			return writeVersion(c.App.Writer)
		}
		// What urfave does without an Action: help, or "No help topic"
		// for an unknown command.
		if c.Args().Present() {
			return cli.ShowCommandHelp(c, c.Args().First())
		}
		return cli.ShowAppHelp(c)
	}
	withNameCompletion(env, app.Commands)
	return app
}
