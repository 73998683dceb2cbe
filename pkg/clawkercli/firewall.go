package clawkercli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

const (
	fwAddUsage     = "clawker firewall add DST [--proto P] [--port N|lo-hi] [--action allow|deny] [--path P [--methods GET,POST] [--path-default allow|deny]] [--project P]... | clawker firewall add --preset NAME [--project P]..."
	fwRemoveUsage  = "clawker firewall remove DST [--proto P] [--port N] [--path P] [--project P]... | clawker firewall remove --all"
	fwEnableUsage  = "clawker firewall enable --agent NAME [--project P]"
	fwDisableUsage = "clawker firewall disable --agent NAME [--project P]"
	fwBypassUsage  = "clawker firewall bypass DURATION --agent NAME [--project P]"
)

// The bypass lengths the control plane accepts (egress.MaxBypass and the
// AdminService's lower bound); checked here too, so a typo does not bring
// the control plane up for nothing.
const (
	minBypass = time.Second
	maxBypass = time.Hour
)

// dockerTimeout bounds each Docker call of the firewall verbs and of
// `controlplane down`'s agent check.
const dockerTimeout = 30 * time.Second

func firewallCommand(env Env) *cli.Command {
	agentFlags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "agent", Usage: "agent name (required)"},
			&cli.StringFlag{Name: "project", Usage: "project name (default: the current directory's name, made valid)"},
			&cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"},
		}
	}
	formatFlag := func() cli.Flag {
		return &cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"}
	}
	return &cli.Command{
		Name:  "firewall",
		Usage: "manage the egress firewall: its stack, its rules, and the enforcement of one agent",
		Description: "For enable, disable and bypass the agent is container clawker.<project>.<agent>; the project\n" +
			"defaults to the current directory's name. These verbs bring the control plane up first when it is not running.",
		Subcommands: []*cli.Command{
			{
				Name:   "up",
				Usage:  "bring the firewall stack (DNS server and egress proxy) up and wait until it is healthy",
				Action: func(c *cli.Context) error { return firewallUp(c, env) },
			},
			{
				Name:   "down",
				Usage:  "stop the firewall stack",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "stop it even while agents are enforced (their egress is then refused)"}},
				Action: func(c *cli.Context) error { return firewallDown(c, env) },
			},
			{
				Name:   "list",
				Usage:  "list the egress rules (with --project, those that apply to its agents)",
				Flags:  []cli.Flag{formatFlag(), &cli.StringFlag{Name: "project", Usage: "only the rules that apply to this project's agents: the global ones and its own"}},
				Action: func(c *cli.Context) error { return firewallList(c, env) },
			},
			{
				Name:      "add",
				Usage:     "add an egress rule, change the action of an existing one, or add a path rule to one (--path)",
				ArgsUsage: "DST",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "proto", Usage: "https, http, tcp or ssh (default https)"},
					&cli.StringFlag{Name: "port", Usage: "a port (443) or a range (8000-8100) (default: the proto's, https 443, http 80, ssh 22)"},
					&cli.StringFlag{Name: "action", Usage: "allow or deny (default allow); with --path, the path rule's action"},
					&cli.StringFlag{Name: "path", Usage: "add a path rule: a prefix (/v1/) or ~ and an RE2 expression matched against the whole path"},
					&cli.StringFlag{Name: "methods", Usage: "with --path: the HTTP methods the path rule applies to, comma-separated (default every method)"},
					&cli.StringFlag{Name: "path-default", Usage: "with --path: what a request no path rule matches gets, allow or deny (default: the rule's, deny for a new one)"},
					presetFlag(),
					projectsFlag("scope the rule to this project's agents (repeat for several; default: every agent)"),
					formatFlag(),
				},
				Description: fwAddUsage + " (flags may also come first)\n" +
					"DST is a name (example.com), a name and all its subdomains (.example.com), an IPv4 address or a CIDR.\n" +
					"--path adds one path rule per invocation to the https/http rule on a name (created if missing, allow); its\n" +
					"connections are then inspected and each request decided by path and method: the longest matching path\n" +
					"wins, ties go to the rule added first. With --path, --action is the path rule's action (the rule itself\n" +
					"is or becomes allow); without it, --action is the rule's. The same path again replaces that path rule.\n" +
					"--project scopes the rule to that project's agents (repeat it for several); a project may have its own rule\n" +
					"for a DST a global rule names: its agents get both, and at equal specificity deny wins.",
				Action: func(c *cli.Context) error { return firewallAdd(c, env) },
			},
			presetsCommand(),
			deniedCommand(env, formatFlag()),
			rotateCACommand(env, formatFlag()),
			{
				Name:      "remove",
				Usage:     "remove an egress rule, or all of them with --all",
				ArgsUsage: "DST",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "proto", Usage: "the rule's proto (default https)"},
					&cli.StringFlag{Name: "port", Usage: "the rule's port or range (default: the proto's)"},
					&cli.StringFlag{Name: "path", Usage: "remove only this path rule of the rule (the rule stays)"},
					&cli.BoolFlag{Name: "all", Usage: "remove every rule"},
					projectsFlag("the rule's projects, as added (default: the global rule)"),
					formatFlag(),
				},
				Description: fwRemoveUsage + " (flags may also come first)\nA rule is known by its DST, proto and port; its action does not matter.\n" +
					"With --path, only that path rule is removed; removing the last one leaves a plain, uninspected rule.\n" +
					"With --project, the rule scoped to exactly those projects is removed, not the global one.",
				Action: func(c *cli.Context) error { return firewallRemove(c, env) },
			},
			{
				Name:   "reload",
				Usage:  "read the rule store again (after editing it by hand) and hand the rules to the stack",
				Action: func(c *cli.Context) error { return firewallReload(c, env) },
			},
			{
				Name:   "enable",
				Usage:  "enforce an agent's egress again: clears a disable or a bypass",
				Flags:  agentFlags(),
				Action: func(c *cli.Context) error { return firewallMutate(c, env, "enable") },
			},
			{
				Name:   "disable",
				Usage:  "let an agent's egress through unfiltered until `clawker firewall enable`",
				Flags:  agentFlags(),
				Action: func(c *cli.Context) error { return firewallMutate(c, env, "disable") },
			},
			{
				Name:      "bypass",
				Usage:     "let an agent's egress through unfiltered for DURATION (1s to 1h, e.g. 30s or 5m)",
				ArgsUsage: "DURATION",
				Flags:     agentFlags(),
				Action:    func(c *cli.Context) error { return firewallMutate(c, env, "bypass") },
				Description: fwBypassUsage + " (flags may also come first)\n" +
					"The bypass ends on time even if the control plane stops: its end is kept with the eBPF programs.",
			},
			{
				Name:   "status",
				Usage:  "show whether the firewall is on, the enforced agents and the number of routes",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"}},
				Action: func(c *cli.Context) error { return firewallStatus(c, env) },
			},
		},
	}
}

// FirewallActionReport is `firewall enable|disable|bypass --format json`.
type FirewallActionReport struct {
	Action      string `json:"action"` // enable, disable or bypass
	Project     string `json:"project"`
	Agent       string `json:"agent"`
	Container   string `json:"container"` // clawker.<project>.<agent>
	ContainerID string `json:"container_id"`
	// Until is when a bypass ends (UTC); Timeout its length, as Go writes
	// durations ("30s", "5m0s").
	Until   *time.Time `json:"until,omitempty"`
	Timeout string     `json:"timeout,omitempty"`
}

func firewallMutate(c *cli.Context, env Env, action string) error {
	usage := map[string]string{"enable": fwEnableUsage, "disable": fwDisableUsage, "bypass": fwBypassUsage}[action]
	args, err := interspersed(c)
	if err != nil {
		return fmt.Errorf("firewall %s: %w (%s)", action, err, usage)
	}
	var timeout time.Duration
	v, err := prologue(c, env, needs{
		format: true,
		args: func() (err error) {
			if action == "bypass" {
				timeout, err = bypassArg(args)
				return err
			}
			if len(args) > 0 {
				return fmt.Errorf("firewall %s takes no arguments, got %q (%s)", action, args, usage)
			}
			return nil
		},
		names:  usage,
		cp:     true,
		labels: agentLabels,
	})
	if err != nil {
		return err
	}
	defer v.release()
	project, agent := v.project, v.agent
	d, err := v.docker()
	if err != nil {
		return err
	}

	// Docker first: a wrong name is reported without bringing the control
	// plane up.
	target, err := findRunningAgent(c.Context, d, project, agent)
	if err != nil {
		return err
	}
	cl, err := v.dialAdmin(c.Context)
	if err != nil {
		return err
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(c.Context, adminclient.CallTimeout)
	defer cancel()
	rep := FirewallActionReport{Action: action, Project: project, Agent: agent, Container: target.name, ContainerID: target.id}
	var line string
	switch action {
	case "enable":
		_, err = cl.FirewallEnable(ctx, &adminv1.FirewallEnableRequest{ContainerId: target.id})
		line = "firewall enabled for " + target.name
	case "disable":
		_, err = cl.FirewallDisable(ctx, &adminv1.FirewallDisableRequest{ContainerId: target.id})
		line = "firewall disabled for " + target.name + " (until `clawker firewall enable`)"
	case "bypass":
		var resp *adminv1.FirewallBypassResponse
		resp, err = cl.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: target.id, Timeout: durationpb.New(timeout)})
		if err == nil {
			until := resp.GetUntil().AsTime().UTC()
			applied := resp.GetTimeout().AsDuration()
			rep.Until, rep.Timeout = &until, applied.String()
			line = fmt.Sprintf("bypass for %s until %s (%s)", target.name, until.Format(time.RFC3339), shortDuration(applied))
		}
	}
	if err != nil {
		return rpcError("firewall "+action+" "+target.name, cl.Addr(), err)
	}
	if v.asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	_, err = fmt.Fprintln(env.Stdout, line)
	return err
}

// bypassArg reads the one DURATION argument of `firewall bypass`.
func bypassArg(args []string) (time.Duration, error) {
	if len(args) != 1 {
		if len(args) == 0 {
			return 0, fmt.Errorf("DURATION: required: how long the bypass lasts, e.g. 30s or 5m (%s)", fwBypassUsage)
		}
		return 0, fmt.Errorf("firewall bypass takes one argument, DURATION, got %q (%s)", args, fwBypassUsage)
	}
	d, err := time.ParseDuration(args[0])
	if err != nil {
		return 0, fmt.Errorf("DURATION: %q is not a duration; write e.g. 30s, 5m or 1h (%s)", args[0], fwBypassUsage)
	}
	if d < minBypass || d > maxBypass {
		return 0, fmt.Errorf("DURATION: %s is out of range: a bypass lasts %s to %s, e.g. 30s or 5m", args[0], minBypass, shortDuration(maxBypass))
	}
	return d, nil
}

// agentTarget is a running agent container.
type agentTarget struct{ id, name string }

// findRunningAgent finds clawker.<project>.<agent> as `clawker rm` does:
// by name, insisting on clawker's agent labels; it must also run, since
// the firewall enforces running agents only.
func findRunningAgent(ctx context.Context, d cpboot.Docker, project, agent string) (agentTarget, error) {
	name := agentrun.ContainerName(project, agent)
	in, err := dockerx.Call(ctx, dockerTimeout, func(ctx context.Context) (client.ContainerInspectResult, error) {
		return d.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	})
	notFound := fmt.Errorf("%w: %s (project %s, agent %s)", agentrun.ErrNotFound, name, project, agent)
	if cerrdefs.IsNotFound(err) {
		return agentTarget{}, notFound
	}
	if err != nil {
		return agentTarget{}, fmt.Errorf("inspecting container %s: %w", name, err)
	}
	c := in.Container
	// Docker's inspect also matches an id prefix: insist on the name.
	if strings.TrimPrefix(c.Name, "/") != name {
		return agentTarget{}, notFound
	}
	var l map[string]string
	if c.Config != nil {
		l = c.Config.Labels
	}
	if l[dockerx.LabelManaged] != "true" || l[dockerx.LabelPurpose] != dockerx.PurposeAgent ||
		l[dockerx.LabelProject] != project || l[dockerx.LabelAgent] != agent {
		return agentTarget{}, fmt.Errorf("%w: %s lacks the labels %s=true, %s=%s, %s=%s, %s=%s", agentrun.ErrNotAgent, name,
			dockerx.LabelManaged, dockerx.LabelPurpose, dockerx.PurposeAgent, dockerx.LabelProject, project, dockerx.LabelAgent, agent)
	}
	if c.State == nil || !c.State.Running {
		st := "unknown state"
		if c.State != nil {
			st = string(c.State.Status)
		}
		return agentTarget{}, fmt.Errorf("agent container %s is not running (%s): the firewall acts on running agents only", name, st)
	}
	return agentTarget{id: c.ID, name: name}, nil
}

// rpcError words a failed AdminService call: the control plane's own
// message, which says what to do, or a hint for what the CLI can tell.
func rpcError(what, addr string, err error) error {
	st, ok := grpcstatus.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch st.Code() {
	case codes.Unimplemented:
		return fmt.Errorf("%s: the control plane at %s does not know this call: it runs an older clawker-cp; "+
			"restart it (\"clawker controlplane down\", then \"clawker controlplane up\")", what, addr)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: the control plane at %s did not answer within %s; check it with \"clawker controlplane status\"",
			what, addr, adminclient.CallTimeout)
	}
	return fmt.Errorf("%s: %s", what, st.Message())
}

// FirewallStatusReport is `firewall status --format json`.
type FirewallStatusReport struct {
	// Enabled is settings' firewall.enable as the control plane runs it.
	Enabled bool `json:"enabled"`
	Routes  int  `json:"routes"`
	// Stack lists the stack's members in start order; Network and Subnet
	// name the agent network. All three are empty with the firewall off.
	Stack   []FirewallMemberReport `json:"stack"`
	Network string                 `json:"network"`
	Subnet  string                 `json:"subnet"`
	// Rules is the number of stored egress rules.
	Rules int `json:"rules"`
	// AgentToAgent is firewall.agent_to_agent: deny, project or allow.
	AgentToAgent string `json:"agent_to_agent,omitempty"`
	// Agents are the enforced agent containers, by name.
	Agents []FirewallAgentReport `json:"agents"`
}

// FirewallMemberReport is one member of the firewall stack.
type FirewallMemberReport struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	ContainerID string `json:"container_id"`
	Healthy     bool   `json:"healthy"`
	Error       string `json:"error,omitempty"`
}

// FirewallAgentReport is one enforced agent container.
type FirewallAgentReport struct {
	// Container is clawker.<project>.<agent>; empty (and Project and
	// Agent too) when the registry does not know the container.
	Container   string `json:"container"`
	Project     string `json:"project"`
	Agent       string `json:"agent"`
	ContainerID string `json:"container_id"`
	CgroupID    uint64 `json:"cgroup_id"`
	// State is enforced, disabled or bypassed.
	State string `json:"state"`
	// BypassUntil is when a bypass ends (UTC), null without one.
	BypassUntil *time.Time `json:"bypass_until"`
}

// The states of an agent's enforcement.
const (
	fwEnforced = "enforced"
	fwDisabled = "disabled"
	fwBypassed = "bypassed"
)

func firewallStatus(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{format: true, noArgs: "firewall status", cp: true})
	if err != nil {
		return err
	}
	defer v.release()
	cl, err := v.dialAdmin(c.Context)
	if err != nil {
		return err
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(c.Context, adminclient.CallTimeout)
	defer cancel()
	resp, err := cl.FirewallStatus(ctx, &adminv1.FirewallStatusRequest{})
	if err != nil {
		return rpcError("firewall status", cl.Addr(), err)
	}
	// Names come from the registry; without them the table shows ids.
	var agents []*adminv1.Agent
	if len(resp.GetAgents()) > 0 {
		list, err := listAllAgents(c.Context, cl)
		if err != nil {
			fmt.Fprintf(env.Stderr, "note: agent names unavailable: %s\n", grpcstatus.Convert(err).Message())
		}
		agents = list
	}
	rep := firewallReport(resp, agents)
	if v.asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return writeFirewallStatus(env.Stdout, rep)
}

// firewallReport joins the firewall's view with the registry's names and
// sorts by name (unknown names last), then container id.
func firewallReport(resp *adminv1.FirewallStatusResponse, registered []*adminv1.Agent) FirewallStatusReport {
	byID := map[string]*adminv1.Agent{}
	for _, a := range registered {
		byID[a.GetContainerId()] = a
	}
	rep := FirewallStatusReport{
		Enabled: resp.GetEnabled(), Routes: int(resp.GetRouteCount()),
		Stack: []FirewallMemberReport{}, Network: resp.GetNetwork(), Subnet: resp.GetSubnet(), Rules: int(resp.GetRules()),
		AgentToAgent: resp.GetAgentToAgent(),
		Agents:       []FirewallAgentReport{},
	}
	for _, m := range resp.GetStack() {
		rep.Stack = append(rep.Stack, FirewallMemberReport{
			Name: m.GetName(), Address: m.GetAddress(), ContainerID: m.GetContainerId(), Healthy: m.GetHealthy(), Error: m.GetError(),
		})
	}
	for _, a := range resp.GetAgents() {
		r := FirewallAgentReport{ContainerID: a.GetContainerId(), CgroupID: a.GetCgroupId(), State: fwEnforced, BypassUntil: utcTime(a.GetBypassUntil())}
		if reg, ok := byID[a.GetContainerId()]; ok && reg.GetProject() != "" && reg.GetAgentName() != "" {
			r.Project, r.Agent = reg.GetProject(), reg.GetAgentName()
			r.Container = agentrun.ContainerName(r.Project, r.Agent)
		}
		switch {
		case a.GetDisabled():
			r.State = fwDisabled
		case r.BypassUntil != nil:
			r.State = fwBypassed
		}
		rep.Agents = append(rep.Agents, r)
	}
	sort.SliceStable(rep.Agents, func(i, j int) bool {
		x, y := rep.Agents[i], rep.Agents[j]
		if (x.Container == "") != (y.Container == "") {
			return y.Container == ""
		}
		if x.Container != y.Container {
			return x.Container < y.Container
		}
		return x.ContainerID < y.ContainerID
	})
	return rep
}

// writeFirewallStatus prints `firewall status`:
//
//	Firewall: enabled
//	DNS: ✓ 172.18.0.201:53
//	proxy: ✗ connection refused
//	Network: clawker-net 172.18.0.0/24
//	Rules: 3 active
//	Routes: 12
//	AGENT              CONTAINER     CGROUP  STATE
//	clawker.myapp.dev  a1b2c3d4e5f6  4242    enforced
func writeFirewallStatus(w io.Writer, rep FirewallStatusReport) error {
	if !rep.Enabled {
		_, err := fmt.Fprintln(w, "Firewall: disabled (firewall.enable: false in settings.yaml): no agent's egress is enforced")
		return err
	}
	fmt.Fprintln(w, "Firewall: enabled")
	writeStack(w, rep.Stack)
	if rep.Network != "" {
		fmt.Fprintf(w, "Network: %s %s\n", rep.Network, rep.Subnet)
	}
	if rep.AgentToAgent != "" {
		fmt.Fprintf(w, "Agent to agent: %s (firewall.agent_to_agent)\n", rep.AgentToAgent)
	}
	fmt.Fprintf(w, "Rules: %d active\n", rep.Rules)
	fmt.Fprintf(w, "Routes: %d\n", rep.Routes)
	if len(rep.Agents) == 0 {
		_, err := fmt.Fprintln(w, "Agents: none enforced")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tCONTAINER\tCGROUP\tSTATE")
	for _, a := range rep.Agents {
		st := a.State
		if a.State == fwBypassed {
			st += " until " + tableTime(a.BypassUntil)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", orDash(a.Container), shortID(a.ContainerID), a.CgroupID, st)
	}
	return tw.Flush()
}

// shortDuration writes d without trailing zero units: 5m, 1h, 1h30m.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// interspersed lets flags follow the arguments, as in `clawker firewall
// bypass 5m --agent dev`: urfave/cli stops parsing flags at the first
// argument, so the ones after it are set here. It returns the arguments.
func interspersed(c *cli.Context) ([]string, error) {
	in := c.Args().Slice()
	var args []string
	for i := 0; i < len(in); i++ {
		a := in[i]
		if a == "--" {
			args = append(args, in[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			args = append(args, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := lookupFlag(c.Command.Flags, name)
		if f == nil {
			return nil, fmt.Errorf("flag provided but not defined: %s", a)
		}
		if !hasValue {
			if _, isBool := f.(*cli.BoolFlag); isBool {
				value = "true"
			} else {
				if i+1 >= len(in) {
					return nil, fmt.Errorf("flag needs an argument: %s", a)
				}
				i++
				value = in[i]
			}
		}
		if err := c.Set(name, value); err != nil {
			return nil, fmt.Errorf("invalid value %q for flag %s: %v", value, a, err)
		}
	}
	return args, nil
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// writeStack prints one line per stack member: "DNS: ✓ 172.18.0.201:53",
// or "DNS: ✗ <why>" when it is not healthy.
func writeStack(w io.Writer, members []FirewallMemberReport) {
	for _, m := range members {
		if m.Healthy {
			fmt.Fprintf(w, "%s: ✓ %s\n", m.Name, m.Address)
			continue
		}
		why := m.Error
		if why == "" {
			why = "not healthy"
		}
		fmt.Fprintf(w, "%s: ✗ %s\n", m.Name, why)
	}
}

// firewallCall runs the prologue n of a verb that brings the control plane
// up, dials the AdminService and runs one call within
// adminclient.CallTimeout.
func firewallCall(c *cli.Context, env Env, n needs, call func(ctx context.Context, v *verb, cl *adminclient.Client) error) error {
	n.cp = true
	v, err := prologue(c, env, n)
	if err != nil {
		return err
	}
	defer v.release()
	cl, err := v.dialAdmin(c.Context)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(c.Context, adminclient.CallTimeout)
	defer cancel()
	return call(ctx, v, cl)
}

func firewallUp(c *cli.Context, env Env) error {
	return firewallCall(c, env, needs{noArgs: "firewall up"}, func(ctx context.Context, _ *verb, cl *adminclient.Client) error {
		resp, err := cl.FirewallInit(ctx, &adminv1.FirewallInitRequest{})
		if err != nil {
			return rpcError("firewall up", cl.Addr(), err)
		}
		fmt.Fprintln(env.Stdout, "firewall stack up")
		writeStack(env.Stdout, firewallReport(&adminv1.FirewallStatusResponse{Stack: resp.GetStack()}, nil).Stack)
		return nil
	})
}

func firewallDown(c *cli.Context, env Env) error {
	return firewallCall(c, env, needs{noArgs: "firewall down"}, func(ctx context.Context, _ *verb, cl *adminclient.Client) error {
		if _, err := cl.FirewallRemove(ctx, &adminv1.FirewallRemoveRequest{Force: c.Bool("force")}); err != nil {
			return rpcError("firewall down", cl.Addr(), err)
		}
		_, err := fmt.Fprintln(env.Stdout, "firewall stack down")
		return err
	})
}

func firewallReload(c *cli.Context, env Env) error {
	return firewallCall(c, env, needs{noArgs: "firewall reload"}, func(ctx context.Context, _ *verb, cl *adminclient.Client) error {
		resp, err := cl.FirewallReload(ctx, &adminv1.FirewallReloadRequest{})
		if err != nil {
			return rpcError("firewall reload", cl.Addr(), err)
		}
		_, err = fmt.Fprintf(env.Stdout, "reloaded %s\n", plural(int(resp.GetRules()), "rule"))
		return err
	})
}

// FirewallRuleReport is one egress rule in `firewall list|add|remove
// --format json`.
type FirewallRuleReport struct {
	// Key is "dst:proto:port", the rule's identity.
	Key    string `json:"key"`
	Dst    string `json:"dst"`
	Proto  string `json:"proto"`
	Port   string `json:"port"` // "443" or "8000-8100"
	Action string `json:"action,omitempty"`
	ID     uint32 `json:"id,omitempty"`
	// Projects scope the rule to those projects' agents; absent, it is
	// global.
	Projects []string `json:"projects,omitempty"`
	// PathRules, when present, make the rule inspected; PathDefault
	// decides the requests none matches.
	PathRules   []FirewallPathRuleReport `json:"path_rules,omitempty"`
	PathDefault string                   `json:"path_default,omitempty"`
	// Status is what add or remove did: added, updated, unchanged,
	// removed, path_removed or not_found; empty in list.
	Status string `json:"status,omitempty"`
}

// FirewallPathRuleReport is one path rule of a FirewallRuleReport.
type FirewallPathRuleReport struct {
	Path    string   `json:"path"`
	Action  string   `json:"action"`
	Methods []string `json:"methods,omitempty"`
}

func ruleReport(r *adminv1.EgressRule) FirewallRuleReport {
	rep := FirewallRuleReport{Key: ruleKey(r), Dst: r.GetDst(), Proto: r.GetProto(), Port: r.GetPort(), Action: r.GetAction(), ID: r.GetId(),
		PathDefault: r.GetPathDefault(), Projects: r.GetProjects()}
	for _, pr := range r.GetPathRules() {
		rep.PathRules = append(rep.PathRules, FirewallPathRuleReport{Path: pr.GetPath(), Action: pr.GetAction(), Methods: pr.GetMethods()})
	}
	return rep
}

// ruleKey is the rule's identity as the control plane writes it.
func ruleKey(r *adminv1.EgressRule) string {
	k := r.GetDst() + ":" + r.GetProto() + ":" + r.GetPort()
	if ps := r.GetProjects(); len(ps) > 0 {
		k += "@" + strings.Join(ps, ",")
	}
	return k
}

// ruleStatusWord is how add and remove name a status.
func ruleStatusWord(st adminv1.RuleStatus) string {
	switch st {
	case adminv1.RuleStatus_RULE_STATUS_ADDED:
		return "added"
	case adminv1.RuleStatus_RULE_STATUS_MODIFIED:
		return "updated"
	case adminv1.RuleStatus_RULE_STATUS_UNCHANGED:
		return "unchanged"
	case adminv1.RuleStatus_RULE_STATUS_REMOVED:
		return "removed"
	case adminv1.RuleStatus_RULE_STATUS_NOT_FOUND:
		return "not_found"
	case adminv1.RuleStatus_RULE_STATUS_PATH_REMOVED:
		return "path_removed"
	}
	return strings.ToLower(strings.TrimPrefix(st.String(), "RULE_STATUS_"))
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func firewallList(c *cli.Context, env Env) error {
	return firewallCall(c, env, needs{format: true, noArgs: "firewall list"}, func(ctx context.Context, v *verb, cl *adminclient.Client) error {
		resp, err := cl.FirewallListRules(ctx, &adminv1.FirewallListRulesRequest{Project: c.String("project")})
		if err != nil {
			return rpcError("firewall list", cl.Addr(), err)
		}
		rules := make([]FirewallRuleReport, 0, len(resp.GetRules()))
		for _, r := range resp.GetRules() {
			rules = append(rules, ruleReport(r))
		}
		if v.asJSON {
			return writeJSON(env.Stdout, rules)
		}
		return writeRules(env.Stdout, rules)
	})
}

// writeRules prints `firewall list`, an inspected rule's path rules
// (in their order) and path default under it:
//
//	DST              PROTO  PORT  ACTION  ID
//	api.example.com  https  443   allow   1
//	  path /v1/                   allow   GET,POST
//	  path /admin                 deny    every method
//	  path_default                deny    unmatched paths
//	example.com      https  443   allow   2
func writeRules(w io.Writer, rules []FirewallRuleReport) error {
	if len(rules) == 0 {
		_, err := fmt.Fprintln(w, "No egress rules. Add one: clawker firewall add example.com")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// A PROJECTS column only when some rule is scoped: a list of global
	// rules reads as before.
	scoped := slices.ContainsFunc(rules, func(r FirewallRuleReport) bool { return len(r.Projects) > 0 })
	scope := func(r FirewallRuleReport) string {
		switch {
		case !scoped:
			return ""
		case len(r.Projects) == 0:
			return "\tevery project"
		}
		return "\t" + strings.Join(r.Projects, ",")
	}
	if scoped {
		fmt.Fprintln(tw, "DST\tPROTO\tPORT\tACTION\tID\tPROJECTS")
	} else {
		fmt.Fprintln(tw, "DST\tPROTO\tPORT\tACTION\tID")
	}
	for _, r := range rules {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d%s\n", r.Dst, r.Proto, r.Port, r.Action, r.ID, scope(r))
		// Every line fills the ID column: a shorter line would split the
		// table's alignment, an empty last cell leave trailing blanks.
		for _, pr := range r.PathRules {
			methods := strings.Join(pr.Methods, ",")
			if methods == "" {
				methods = "every method"
			}
			fmt.Fprintf(tw, "  path %s\t\t\t%s\t%s%s\n", pr.Path, pr.Action, methods, scope(r))
		}
		if len(r.PathRules) > 0 {
			fmt.Fprintf(tw, "  path_default\t\t\t%s\tunmatched paths%s\n", r.PathDefault, scope(r))
		}
	}
	return tw.Flush()
}

// withPathRule moves --path, --methods, --action and --path-default into
// the one rule of `firewall add DST`: with --path, --action is the path
// rule's (the rule is an allow rule: only those carry path rules).
func withPathRule(c *cli.Context, rules []*adminv1.EgressRule) error {
	path, methods, pathDefault := c.String("path"), c.String("methods"), c.String("path-default")
	switch {
	case path == "" && methods != "":
		return fmt.Errorf("--methods: only with --path, the path rule it limits (%s)", fwAddUsage)
	case path == "" && pathDefault != "":
		return fmt.Errorf("--path-default: only with --path (%s)", fwAddUsage)
	case path == "":
		return nil
	case c.String("preset") != "":
		return fmt.Errorf("--path: give either --preset or a rule with --path, not both (%s)", fwAddUsage)
	}
	r := rules[0]
	pr := &adminv1.PathRule{Path: path, Action: r.GetAction()}
	for _, m := range strings.Split(methods, ",") {
		if m = strings.TrimSpace(m); m != "" {
			pr.Methods = append(pr.Methods, m)
		}
	}
	r.Action, r.PathRules, r.PathDefault = "", []*adminv1.PathRule{pr}, pathDefault
	return nil
}

func firewallAdd(c *cli.Context, env Env) error {
	args, err := interspersed(c)
	if err != nil {
		return fmt.Errorf("firewall add: %w (%s)", err, fwAddUsage)
	}
	var rules []*adminv1.EgressRule
	return firewallCall(c, env, needs{format: true, args: func() (err error) {
		if rules, err = addRequestRules(c, args); err != nil {
			return err
		}
		for _, r := range rules {
			r.Projects = c.StringSlice("project")
		}
		return withPathRule(c, rules)
	}}, func(ctx context.Context, v *verb, cl *adminclient.Client) error {
		resp, err := cl.FirewallAddRules(ctx, &adminv1.FirewallAddRulesRequest{Rules: rules})
		if err != nil {
			return rpcError("firewall add", cl.Addr(), err)
		}
		if len(resp.GetRules()) != len(resp.GetStatuses()) {
			return fmt.Errorf("firewall add: the control plane answered %d statuses for %d rules", len(resp.GetStatuses()), len(resp.GetRules()))
		}
		reports := make([]FirewallRuleReport, 0, len(resp.GetRules()))
		for i, r := range resp.GetRules() {
			rep := ruleReport(r)
			rep.Status = ruleStatusWord(resp.GetStatuses()[i])
			reports = append(reports, rep)
		}
		if v.asJSON {
			return writeJSON(env.Stdout, reports)
		}
		for _, r := range reports {
			if path := c.String("path"); path != "" {
				fmt.Fprintf(env.Stdout, "%s %s path %s\n", r.Status, r.Key, path)
				continue
			}
			fmt.Fprintf(env.Stdout, "%s %s\n", r.Status, r.Key)
		}
		return nil
	})
}

// FirewallRemoveReport is `firewall remove --format json`.
type FirewallRemoveReport struct {
	// Status is removed, path_removed (with --path) or not_found.
	Status string `json:"status"`
	// Rule is the rule asked for (null with --all).
	Rule *FirewallRuleReport `json:"rule"`
	// Path is the path rule asked for, with --path.
	Path string `json:"path,omitempty"`
	// Removed is how many rules were removed; Remaining how many are left.
	Removed   int `json:"removed"`
	Remaining int `json:"remaining"`
}

func firewallRemove(c *cli.Context, env Env) error {
	args, err := interspersed(c)
	if err != nil {
		return fmt.Errorf("firewall remove: %w (%s)", err, fwRemoveUsage)
	}
	all, path := c.Bool("all"), c.String("path")
	checkArgs := func() error {
		switch {
		case all && path != "":
			return fmt.Errorf("--path: give either --all or a rule's DST with --path, not both (%s)", fwRemoveUsage)
		case all && (len(args) > 0 || c.String("proto") != "" || c.String("port") != "" || len(c.StringSlice("project")) > 0):
			return fmt.Errorf("--all: give either --all or a rule (DST with --proto and --port), not both (%s)", fwRemoveUsage)
		case !all && len(args) == 0:
			return fmt.Errorf("DST: required: the rule's destination, or --all for every rule (%s)", fwRemoveUsage)
		case len(args) > 1:
			return fmt.Errorf("firewall remove takes one argument, DST, got %q (%s)", args, fwRemoveUsage)
		}
		return nil
	}
	req := &adminv1.FirewallRemoveRuleRequest{All: all, Proto: c.String("proto"), Port: c.String("port"), Path: path,
		Projects: c.StringSlice("project")}
	if !all && len(args) > 0 {
		req.Dst = args[0]
	}
	return firewallCall(c, env, needs{format: true, args: checkArgs}, func(ctx context.Context, v *verb, cl *adminclient.Client) error {
		resp, err := cl.FirewallRemoveRule(ctx, req)
		if err != nil {
			return rpcError("firewall remove", cl.Addr(), err)
		}
		rep := FirewallRemoveReport{Status: ruleStatusWord(resp.GetStatus()), Removed: int(resp.GetRemoved()), Remaining: int(resp.GetTotal()), Path: path}
		var key string
		if resp.GetRule() != nil {
			r := ruleReport(resp.GetRule())
			rep.Rule, key = &r, r.Key
		}
		if path != "" {
			key += " path " + path
		}
		notFound := resp.GetStatus() == adminv1.RuleStatus_RULE_STATUS_NOT_FOUND
		switch {
		case v.asJSON:
			if err := writeJSON(env.Stdout, rep); err != nil {
				return err
			}
		case all:
			fmt.Fprintf(env.Stdout, "removed %s\n", plural(rep.Removed, "rule"))
		case !notFound:
			fmt.Fprintf(env.Stdout, "%s %s\n", rep.Status, key)
		}
		if notFound {
			// A miss is not the control plane's error, but the rule the
			// user meant is not there: say so and fail, as rm would.
			return fmt.Errorf("not found: %s", key)
		}
		return nil
	})
}

// plural is "1 rule" or "3 rules".
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
