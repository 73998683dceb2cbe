package clawkercli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/debugknob"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/settings"
)

const runUsage = "clawker run [--project P] --agent NAME IMAGE [CMD...]"

func runCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run an agent container: clawkerd as PID 1 starts CMD once its Session with the control plane is up",
		ArgsUsage: "IMAGE [CMD...]",
		Description: "Brings the control plane up if needed, then creates container clawker.<project>.<agent> from IMAGE on\n" +
			"clawker-net, fully unprivileged (all capabilities dropped, Docker's default seccomp and AppArmor\n" +
			"profiles, no mounts), copies clawkerd and a freshly minted agent certificate (valid " + days(agentrun.CertValidity) + ")\n" +
			"into /clawker/ (when the control plane runs Ory, also a client assertion valid " + agentrun.AssertionValidity.String() + " that clawkerd\n" +
			"trades for the token a new agent's first Register needs), and starts it. Before creating it, waits (up to\n" +
			"30s) until the control plane's clock has reached the host's. clawkerd registers with the control plane\n" +
			"and starts the command only once its\n" +
			"Session is established and, with firewall.enable, once the control plane's firewall enforces the\n" +
			"container. The command is the image's entrypoint followed by CMD, or by\n" +
			"the image's own CMD when none is given, as with docker run. IMAGE must be present: nothing is pulled.\n" +
			"With firewall.enable, the agent trusts the firewall CA (made on first need; its certificate only) beside the\n" +
			"image's roots: /etc/clawker/ca-bundle.crt, named by SSL_CERT_FILE and the like in the container's environment.\n" +
			"The project defaults to the current directory's name. Prints the container id.\n" +
			"With firewall.enable: false, run refuses unless --no-firewall is given, and then warns on every run\n" +
			"that the agent runs unconfined; with the firewall on, --no-firewall is refused.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "project", Usage: "project name (default: the current directory's name, made valid)"},
			&cli.StringFlag{Name: "agent", Usage: "agent name: [a-z0-9][a-z0-9_-]{0,62} (required)"},
			&cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text (the container id) or json"},
			&cli.BoolFlag{Name: noFirewallFlag, Usage: "accept running the agent unconfined (no egress enforcement) while firewall.enable is false; refused when the firewall is on"},
		},
		Action: func(c *cli.Context) error { return runAgent(c, env) },
	}
}

// RunReport is `clawker run --format json`.
type RunReport struct {
	Agent agentrun.Result `json:"agent"`
	// Bootstrap is what bringing the control plane up did; absent when the
	// CLI was told not to (Env.Bootstrap nil).
	Bootstrap *cpboot.Result `json:"bootstrap,omitempty"`
}

func runAgent(c *cli.Context, env Env) error {
	var image string
	var cmd []string
	v, err := prologue(c, env, needs{
		format: true,
		args: func() error {
			if c.NArg() < 1 {
				return fmt.Errorf("run: IMAGE is required (%s)", runUsage)
			}
			image, cmd = c.Args().First(), c.Args().Tail()
			return nil
		},
		names:    runUsage,
		settings: true,
		// Checked before anything is asked of Docker: an unconfined agent
		// must never start by accident.
		checkSettings: func(s settings.Settings) error {
			if err := checkFirewallConsent(s.Firewall.Enable, c.Bool(noFirewallFlag)); err != nil {
				return err
			}
			if !s.Firewall.Enable {
				// Every run, not once: the consent is per invocation.
				fmt.Fprintln(env.Stderr, unconfinedWarning)
			}
			return nil
		},
		labels: agentLabels,
	})
	if err != nil {
		return err
	}
	defer v.release()
	project, agent, paths, s := v.project, v.agent, v.paths, v.s
	d, err := v.docker()
	if err != nil {
		return err
	}
	ad, ok := d.(agentrun.Docker)
	if !ok {
		return fmt.Errorf("the Docker client (%T) cannot copy files into containers", d)
	}

	var report RunReport
	cp, bootstrapped, err := v.ensureCPForRun(c.Context)
	if err != nil {
		return fmt.Errorf("starting container: bootstrapping services: %w", err)
	}
	if bootstrapped {
		report.Bootstrap = &cp
	}
	m, err := certs.Load(paths.AuthDir)
	if err != nil {
		return err
	}
	fwca, err := firewallCAForRun(s, paths)
	if err != nil {
		return err
	}
	res, err := agentrun.Create(c.Context, ad, agentrun.Spec{
		// With Ory the control plane refuses a new binding without a
		// clawker-agent token: clawkerd gets one with the assertion
		// copied in, posted to Hydra's public port at the CP's address on
		// clawker-net (Hydra public listens on the CP's bind host).
		Token:     agentToken(cp, s),
		Project:   project,
		Agent:     agent,
		Image:     image,
		Cmd:       cmd,
		CPAddr:    net.JoinHostPort(cp.IP.String(), strconv.Itoa(s.ControlPlane.AgentPort)),
		Heartbeat: s.ControlPlane.Sessions.Heartbeat,
		// With the firewall on, clawkerd starts the command only once the
		// control plane enforces the container's egress.
		RequireEnforced: s.Firewall.Enable,
		Labels:          v.labels,
		// Validated when the settings were loaded.
		PidsLimit:  int64(s.Agents.PidsLimit),
		Memory:     agentMemory(s),
		Auth:       m,
		FirewallCA: fwca,
	})
	if errors.Is(err, agentrun.ErrExists) {
		return fmt.Errorf("%w; remove it with `clawker rm -f --project %s --agent %s`, or pick another --agent", err, project, agent)
	}
	if err != nil {
		return err
	}
	if len(res.Argv) == 0 {
		fmt.Fprintf(env.Stderr, "note: %s has no entrypoint or command and none was given: clawkerd runs no command and holds the Session\n", image)
	}
	report.Agent = res
	if v.asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	_, err = fmt.Fprintln(env.Stdout, res.ID)
	return err
}

const noFirewallFlag = "no-firewall"

// unconfinedWarning is printed on stderr by every run that starts an agent
// with the firewall off.
const unconfinedWarning = "warning: firewall.enable is false: the agent runs unconfined (no egress enforcement)"

// checkFirewallConsent makes running without the firewall an explicit
// choice: with it off, --no-firewall must be given; with it on, the flag is
// refused, since it cannot turn enforcement off and would mislead.
func checkFirewallConsent(firewallOn, noFirewall bool) error {
	switch {
	case !firewallOn && !noFirewall:
		return fmt.Errorf("run: the firewall is off (settings firewall.enable: false), so the agent would run unconfined "+
			"(no egress enforcement); pass --%s to accept that, or set firewall.enable: true", noFirewallFlag)
	case firewallOn && noFirewall:
		return fmt.Errorf("run: --%s is refused while the firewall is on (settings firewall.enable: true): "+
			"it does not turn enforcement off; drop the flag, or set firewall.enable: false to run unconfined", noFirewallFlag)
	}
	return nil
}

// agentToken is the clawker-agent token clawkerd gets before its first
// Register, when the control plane runs Ory (nil otherwise): the exchange
// goes to Hydra's public port at the CP's address on clawker-net, and the
// assertion names Hydra's token endpoint as Hydra computes it, the same
// URL the CLI itself posts to on host loopback.
func agentToken(cp cpboot.Result, s settings.Settings) *agentrun.Token {
	if !cp.Ory {
		return nil
	}
	return &agentrun.Token{
		URL:      "https://" + net.JoinHostPort(cp.IP.String(), strconv.Itoa(s.ControlPlane.HydraPublicPort)) + "/oauth2/token",
		Audience: adminclient.TokenURL(s),
	}
}

// agentNames reads --project and --agent and checks them against the
// certificate naming rules; errors name the flag. The project defaults to
// the current directory's name.
func agentNames(c *cli.Context, usage string) (project, agent string, err error) {
	agent = c.String("agent")
	if agent == "" {
		return "", "", fmt.Errorf("--agent: required: the agent's name (%s)", usage)
	}
	project = c.String("project")
	if project == "" {
		dir, err := os.Getwd()
		if err != nil {
			return "", "", fmt.Errorf("--project: not given, and the current directory is unknown (%v); pass --project", err)
		}
		p, ok := agentrun.ProjectFromDir(dir)
		if !ok {
			return "", "", fmt.Errorf("--project: not given, and the current directory %q yields no valid project name; pass --project", dir)
		}
		project = p
	}
	if err := agentrun.ValidateNames(project, agent); err != nil {
		var fe *certs.InvalidFieldError
		if errors.As(err, &fe) {
			return "", "", fmt.Errorf("--%s: %w", fe.Field, err)
		}
		return "", "", err
	}
	return project, agent, nil
}

// debugLabels reads the CLAWKER_DEBUG_LABELS knob (see controlplane_up.go).
func debugLabels(env Env) (map[string]string, error) {
	labels, err := cpDebugLabels(env)
	if err != nil {
		return nil, err
	}
	for k := range labels {
		if k == dockerx.LabelProject || k == dockerx.LabelAgent {
			return nil, fmt.Errorf("%s: label %s is clawker's own and cannot be set", labelsEnv, k)
		}
	}
	return labels, nil
}

// ensureCP brings the control plane up for a verb that needs it, as
// `controlplane up` does, with progress on stderr, from what the prologue
// loaded. It does nothing when env.Bootstrap is nil.
func (v *verb) ensureCP(ctx context.Context) error {
	_, _, err := v.ensureCPWith(ctx)
	return err
}

// ensureCPForRun is the control plane side of starting an agent container:
// bring it up (or, told not to, find it running), then pass the clock-sync
// gate (env.ClockGate). It returns the control plane's address in res.IP;
// every error says "ensuring control plane is running".
func (v *verb) ensureCPForRun(ctx context.Context) (res cpboot.Result, bootstrapped bool, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("ensuring control plane is running: %w", err)
		}
	}()
	res, bootstrapped, err = v.ensureCPWith(ctx)
	if err != nil {
		return res, bootstrapped, err
	}
	if !bootstrapped {
		// Told not to bring it up: it must run already.
		d, err := v.docker()
		if err != nil {
			return res, false, err
		}
		st, err := cpboot.Inspect(ctx, d)
		if err != nil {
			return res, false, err
		}
		if !st.Running || !st.IP.IsValid() {
			return res, false, fmt.Errorf("the control plane is not running; start it with `clawker controlplane up`")
		}
		res.IP, res.Ory = st.IP, st.Ory
	}
	if !res.IP.IsValid() {
		return res, bootstrapped, fmt.Errorf("the control plane has no address on %s", cpboot.NetworkName)
	}
	if env := v.env; env.ClockGate != nil {
		if err := env.ClockGate.waitCP(ctx, v.paths, v.s, cpboot.NewReporter(env.Stderr)); err != nil {
			return res, bootstrapped, err
		}
	}
	return res, bootstrapped, nil
}

// ensureCPWith is ensureCP returning what the bootstrap did; bootstrapped
// is false when env.Bootstrap is nil.
func (v *verb) ensureCPWith(ctx context.Context) (res cpboot.Result, bootstrapped bool, err error) {
	env := v.env
	if env.Bootstrap == nil {
		return cpboot.Result{}, false, nil
	}
	d, err := v.docker()
	if err != nil {
		return cpboot.Result{}, false, err
	}
	rep := cpboot.NewReporter(env.Stderr)
	if len(v.labels) > 0 {
		rep.Note(fmt.Sprintf("debug knob %s set: extra labels %s", labelsEnv, env.Getenv(labelsEnv)))
	}
	res, err = env.Bootstrap(ctx, cpboot.Options{Settings: v.s, Paths: v.paths, Docker: d, Reporter: rep, Labels: v.labels, Env: cpDebugEnv(env, rep)})
	return res, true, err
}

// cpDebugEnv is the container environment of the knobs set, each
// reported. The control plane checks the values (a bad one stops it).
func cpDebugEnv(env Env, rep cpboot.Reporter) []string {
	var out []string
	// The knobs of clawker-cp marked ToCP are passed into the control plane
	// container when they are set in the CLI's own environment, so tests
	// can set them on a control plane the CLI brings up.
	for _, k := range debugknob.All() {
		if !k.ToCP {
			continue
		}
		if v := k.Value(env.Getenv); v != "" {
			out = append(out, k.Name+"="+v)
			rep.Note(fmt.Sprintf("debug knob %s=%s set: passed to the control plane container", k.Name, v))
		}
	}
	return out
}

// agentMemory is settings' agents.memory in bytes (0: agentrun's default).
func agentMemory(s settings.Settings) int64 {
	n, err := settings.ParseMemory(s.Agents.Memory)
	if err != nil {
		return 0
	}
	return n
}

// days renders a validity of whole days as "31 days" (time.Duration's
// String says 744h0m0s), anything else as Duration does.
func days(d time.Duration) string {
	const day = 24 * time.Hour
	if d > 0 && d%day == 0 {
		return strconv.Itoa(int(d/day)) + " days"
	}
	return d.String()
}
