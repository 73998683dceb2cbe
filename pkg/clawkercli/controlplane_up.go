package clawkercli

import (
	"fmt"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/debugknob"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// labelsEnv adds labels to everything `controlplane up` creates
// ("key=value,key=value"). A debug knob (debugknob.Labels): tests tag what
// they create with a run id so they can remove exactly that. It is reported
// when set.
var labelsEnv = debugknob.Labels.Name

func upCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "bring the control plane up (a no-op when it runs and is healthy), then show its status",
		Description: "Builds the clawker-controlplane image from the binaries this clawker carries when it is missing,\n" +
			"creates network clawker-net, refreshes the auth material, creates and starts the\n" +
			"clawker-controlplane container and waits for its /healthz. Progress goes to stderr, the status\n" +
			"to stdout; with --format json the status carries what was done under \"bootstrap\".",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"},
			&cli.DurationFlag{Name: "timeout", Value: cpboot.DefaultTimeout, Usage: "how long to wait for /healthz once the container runs"},
		},
		Action: func(c *cli.Context) error { return controlplaneUp(c, env) },
	}
}

func controlplaneUp(c *cli.Context, env Env) error {
	if c.NArg() > 0 {
		return fmt.Errorf("controlplane up takes no arguments, got %q", c.Args().Slice())
	}
	v, err := prologue(c, env, needs{format: true, settings: true, labels: cpLabels})
	if err != nil {
		return err
	}
	defer v.release()
	d, err := v.docker()
	if err != nil {
		return err
	}

	rep := cpboot.NewReporter(env.Stderr)
	if len(v.labels) > 0 {
		rep.Note(fmt.Sprintf("debug knob %s set: extra labels %s", labelsEnv, env.Getenv(labelsEnv)))
	}
	res, err := cpboot.EnsureRunning(c.Context, cpboot.Options{
		Settings: v.s,
		Paths:    v.paths,
		Docker:   d,
		Reporter: rep,
		Timeout:  c.Duration("timeout"),
		Labels:   v.labels,
		Env:      cpDebugEnv(env, rep),
	})
	if err != nil {
		return err
	}
	// EnsureRunning returns only once the container runs and /healthz
	// answered 200: no need to ask Docker again.
	st := StatusReport{Container: "running", Healthz: probeHealth(healthBase(v.s))}
	addFirewall(c.Context, env, v.paths, v.s, &st)
	if v.asJSON {
		st.Bootstrap = &res
	}
	return printStatus(env.Stdout, st, v.asJSON)
}

// cpDebugLabels reads the CLAWKER_DEBUG_LABELS knob for the control plane
// container; debugLabels is the stricter rule for agent containers.
func cpDebugLabels(env Env) (map[string]string, error) {
	labels, err := parseLabels(env.Getenv(labelsEnv))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", labelsEnv, err)
	}
	return labels, nil
}

// parseLabels reads "k=v,k=v".
func parseLabels(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		out[k] = v
	}
	keys := make([]string, 0, len(out))
	for k := range out {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == dockerx.LabelManaged || k == dockerx.LabelPurpose || k == dockerx.LabelBinHash || k == dockerx.LabelSpecHash {
			return nil, fmt.Errorf("label %s is clawker's own and cannot be set", k)
		}
	}
	return out, nil
}
