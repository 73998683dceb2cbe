package clawkercli

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// needs says what a verb reads before it acts. prologue reads it in one
// fixed order (format, the verb's own arguments, names, paths and settings,
// the verb's settings check, debug labels), so the first bad input is the
// one reported, whatever the verb.
type needs struct {
	// format: --format is text or json.
	format bool
	// noArgs is the verb's name when it takes no arguments.
	noArgs string
	// args checks the verb's arguments (after the format).
	args func() error
	// names is the verb's usage line when it reads --project and --agent.
	names string
	// paths: the clawker paths only; settings: the paths and the settings.
	paths, settings bool
	// checkSettings refuses settings the verb cannot act on.
	checkSettings func(settings.Settings) error
	// labels reads CLAWKER_DEBUG_LABELS for the containers the verb
	// creates.
	labels labelUse
	// cp: the verb brings the control plane up first (ensureCP); it
	// implies settings, and the debug labels when env.Bootstrap is set.
	cp bool
}

// labelUse is what the debug labels go on, which decides the labels refused.
type labelUse int

const (
	noLabels labelUse = iota
	// agentLabels go on agent containers too: clawker's project and agent
	// labels are refused as well (debugLabels).
	agentLabels
	// cpLabels go on the control plane container only (parseLabels).
	cpLabels
)

// verb is what prologue read for one invocation, and its Docker client,
// opened on first use and closed by release.
type verb struct {
	env    Env
	asJSON bool
	// project and agent are set with needs.names.
	project, agent string
	paths          settings.Paths
	s              settings.Settings
	labels         map[string]string

	d       cpboot.Docker
	closeD  func()
	dockErr error
}

// prologue checks and loads what n asks for; the caller defers release.
func prologue(c *cli.Context, env Env, n needs) (*verb, error) {
	v := &verb{env: env}
	var err error
	if n.format {
		if v.asJSON, err = checkFormat(c); err != nil {
			return nil, err
		}
	}
	if n.noArgs != "" && c.NArg() > 0 {
		return nil, fmt.Errorf("%s takes no arguments, got %q", n.noArgs, c.Args().Slice())
	}
	if n.args != nil {
		if err := n.args(); err != nil {
			return nil, err
		}
	}
	if n.names != "" {
		if v.project, v.agent, err = agentNames(c, n.names); err != nil {
			return nil, err
		}
	}
	switch {
	case n.settings || n.cp:
		if v.paths, v.s, err = loadPathsSettings(env); err != nil {
			return nil, err
		}
	case n.paths:
		if v.paths, err = settings.ResolvePaths(env.Getenv); err != nil {
			return nil, err
		}
	}
	if n.checkSettings != nil {
		if err := n.checkSettings(v.s); err != nil {
			return nil, err
		}
	}
	use := n.labels
	if use == noLabels && n.cp && env.Bootstrap != nil {
		// Only the bootstrap uses them.
		use = agentLabels
	}
	switch use {
	case agentLabels:
		v.labels, err = debugLabels(env)
	case cpLabels:
		v.labels, err = cpDebugLabels(env)
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

// docker is the verb's Docker client, connected on the first call; a
// failure to connect is returned again on every call.
func (v *verb) docker() (cpboot.Docker, error) {
	if v.d == nil && v.dockErr == nil {
		v.d, v.closeD, v.dockErr = v.env.docker()
	}
	return v.d, v.dockErr
}

// release closes the Docker client if one was opened.
func (v *verb) release() {
	if v.closeD != nil {
		v.closeD()
		v.d, v.closeD = nil, nil
	}
}

// dialAdmin brings the control plane up when needed and opens the
// AdminService with the CLI certificate and a bearer token: what every
// admin verb does first.
func (v *verb) dialAdmin(ctx context.Context) (*adminclient.Client, error) {
	if err := v.ensureCP(ctx); err != nil {
		return nil, err
	}
	return adminclient.Dial(ctx, v.paths, v.s, adminclient.WithOAuth())
}
