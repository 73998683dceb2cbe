package clawkercli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/urfave/cli/v2"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/agentrun"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// `clawker ps` joins Docker's agent containers with the control plane's
// three views of them (registry, sessions, firewall), so that a container
// that runs but is not registered, or not enforced, shows at a glance. It
// never brings the control plane up: it is how one looks at a broken
// host, so a missing control plane is reported, not repaired.

func psCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:  "ps",
		Usage: "list the agent containers with what the control plane knows of each",
		Description: "Every agent container (running or not) from Docker, with its registration (thumbprint), its Session\n" +
			"and its firewall enforcement from the control plane. The control plane is not brought up: when it\n" +
			"does not answer, the containers are listed and its columns say unknown.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "project", Usage: "only this project's agents"},
			&cli.StringFlag{Name: "format", Value: "text", Usage: "output format: text or json"},
		},
		Action: func(c *cli.Context) error { return ps(c, env) },
	}
}

// PSReport is `clawker ps --format json`.
type PSReport struct {
	Agents []PSAgentReport `json:"agents"`
	// Unknown says, for each of the control plane's views it could not
	// read ("registry", "sessions", "firewall"), why; absent when all
	// three were read.
	Unknown map[string]string `json:"unknown,omitempty"`
}

// PSAgentReport is one agent container.
type PSAgentReport struct {
	Agent       string `json:"agent"`
	Project     string `json:"project"`
	Container   string `json:"container"` // its name, clawker.<project>.<agent>
	ContainerID string `json:"container_id"`
	// State is Docker's: running, exited, created, paused, ...
	State string `json:"state"`
	// Registered: the registry binds an agent to this container; null when
	// the registry could not be read. Thumbprint is its certificate's.
	Registered *bool  `json:"registered"`
	Thumbprint string `json:"thumbprint,omitempty"`
	// Session is the state of its Session (connecting, connected, failed,
	// broken, closed), "none" when the control plane has none, "unknown"
	// when the worldview could not be read.
	Session string `json:"session"`
	// Firewall is enforced, bypassed, disabled, not_enforced (it runs but
	// the programs do not hold it), not_running, off (firewall.enable is
	// false) or unknown.
	Firewall    string     `json:"firewall"`
	BypassUntil *time.Time `json:"bypass_until,omitempty"`
}

// The words of PSAgentReport.Session and Firewall besides the control
// plane's own states.
const (
	psUnknown     = "unknown"
	psNone        = "none"
	psNotEnforced = "not_enforced"
	psNotRunning  = "not_running"
	psOff         = "off"
)

// The control plane's views, as PSReport.Unknown names them.
const (
	psRegistry = "registry"
	psSessions = "sessions"
	psFirewall = "firewall"
)

// cpView is what the control plane told, each part nil when unread.
type cpView struct {
	agents   []*adminv1.Agent
	state    *cpapi.WorldState
	firewall *adminv1.FirewallStatusResponse
	unknown  map[string]string
}

func ps(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{format: true, noArgs: "ps", settings: true})
	if err != nil {
		return err
	}
	defer v.release()
	d, err := v.docker()
	if err != nil {
		return err
	}
	f := dockerx.AgentFilter()
	if p := c.String("project"); p != "" {
		f = f.Add("label", dockerx.Label(dockerx.LabelProject, p))
	}
	res, err := dockerx.Call(c.Context, dockerTimeout, func(ctx context.Context) (client.ContainerListResult, error) {
		return d.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	})
	if err != nil {
		return fmt.Errorf("listing agent containers: %w", err)
	}
	view := cpView{unknown: map[string]string{}}
	if len(res.Items) > 0 {
		view = askCP(c.Context, v.paths, v.s)
	}
	rep := psReport(res.Items, view)
	if v.asJSON {
		return writeJSON(env.Stdout, rep)
	}
	if len(rep.Agents) == 0 {
		_, err := fmt.Fprintln(env.Stdout, "No agent containers. Start one: clawker run --agent NAME")
		return err
	}
	if err := writePS(env.Stdout, rep.Agents); err != nil {
		return err
	}
	writeUnknown(env.Stderr, rep.Unknown)
	return nil
}

// askCP reads the three views; one that fails is left nil with its reason.
// A control plane that does not answer the dial is not asked further.
func askCP(ctx context.Context, paths settings.Paths, s settings.Settings) cpView {
	v := cpView{unknown: map[string]string{}}
	cl, err := adminclient.Dial(ctx, paths, s, adminclient.WithOAuth())
	if err != nil {
		for _, k := range []string{psRegistry, psSessions, psFirewall} {
			v.unknown[k] = err.Error()
		}
		return v
	}
	defer cl.Close()
	cctx, cancel := context.WithTimeout(ctx, adminclient.CallTimeout)
	defer cancel()
	if all, err := listAllAgents(ctx, cl); err != nil {
		v.unknown[psRegistry] = "listing agents: " + grpcstatus.Convert(err).Message()
	} else {
		v.agents = all
	}
	if resp, err := cl.FirewallStatus(cctx, &adminv1.FirewallStatusRequest{}); err != nil {
		v.unknown[psFirewall] = rpcError("firewall status", cl.Addr(), err).Error()
	} else {
		v.firewall = resp
	}
	var st cpapi.WorldState
	if _, err := getDebug(ctx, paths, s, "/debug/state", &st); err != nil {
		v.unknown[psSessions] = err.Error()
	} else {
		v.state = &st
	}
	return v
}

// psReport joins the containers with the view, sorted by project, agent,
// then container id.
func psReport(items []container.Summary, v cpView) PSReport {
	registered := map[string]*adminv1.Agent{}
	for _, a := range v.agents {
		registered[a.GetContainerId()] = a
	}
	// A container may have had several Sessions (reconnects): the latest
	// says where it is now.
	sessions := map[string]cpapi.SessionView{}
	if v.state != nil {
		for _, s := range v.state.Sessions {
			if old, ok := sessions[s.ContainerID]; !ok || s.Since.After(old.Since) {
				sessions[s.ContainerID] = s
			}
		}
	}
	enforced := map[string]*adminv1.FirewallAgent{}
	for _, a := range v.firewall.GetAgents() {
		enforced[a.GetContainerId()] = a
	}

	rep := PSReport{Agents: make([]PSAgentReport, 0, len(items))}
	if len(v.unknown) > 0 {
		rep.Unknown = v.unknown
	}
	for _, c := range items {
		r := PSAgentReport{
			Agent: c.Labels[dockerx.LabelAgent], Project: c.Labels[dockerx.LabelProject],
			ContainerID: c.ID, State: string(c.State),
			Session: psUnknown, Firewall: psUnknown,
		}
		if len(c.Names) > 0 {
			r.Container = strings.TrimPrefix(c.Names[0], "/")
		} else if r.Project != "" && r.Agent != "" {
			r.Container = agentrun.ContainerName(r.Project, r.Agent)
		}
		if _, unknown := v.unknown[psRegistry]; !unknown {
			a, ok := registered[c.ID]
			r.Registered = &ok
			if ok {
				r.Thumbprint = a.GetThumbprint()
			}
		}
		if v.state != nil {
			r.Session = psNone
			if s, ok := sessions[c.ID]; ok {
				r.Session = string(s.State)
			}
		}
		if v.firewall != nil {
			r.Firewall = psFirewallState(v.firewall.GetEnabled(), r.State == "running", enforced[c.ID])
			if a := enforced[c.ID]; a != nil && !a.GetDisabled() {
				r.BypassUntil = utcTime(a.GetBypassUntil())
			}
		}
		rep.Agents = append(rep.Agents, r)
	}
	sort.SliceStable(rep.Agents, func(i, j int) bool {
		x, y := rep.Agents[i], rep.Agents[j]
		if x.Project != y.Project {
			return x.Project < y.Project
		}
		if x.Agent != y.Agent {
			return x.Agent < y.Agent
		}
		return x.ContainerID < y.ContainerID
	})
	return rep
}

func psFirewallState(enabled, running bool, a *adminv1.FirewallAgent) string {
	switch {
	case !enabled:
		return psOff
	case a != nil && a.GetDisabled():
		return fwDisabled
	case a != nil && a.GetBypassUntil() != nil:
		return fwBypassed
	case a != nil:
		return fwEnforced
	case !running:
		return psNotRunning
	}
	return psNotEnforced
}

// writePS prints the table of `clawker ps`:
//
//	AGENT  PROJECT  CONTAINER     STATE    REGISTERED    SESSION    FIREWALL
//	dev    myapp    a1b2c3d4e5f6  running  9f8e7d6c5b4a  connected  enforced
//	new    myapp    0f1e2d3c4b5a  running  no            none       not enforced
func writePS(w io.Writer, agents []PSAgentReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tPROJECT\tCONTAINER\tSTATE\tREGISTERED\tSESSION\tFIREWALL")
	for _, a := range agents {
		reg := psUnknown
		switch {
		case a.Registered == nil:
		case *a.Registered:
			reg = orDash(shortID(a.Thumbprint))
		default:
			reg = "no"
		}
		fw := a.Firewall
		switch fw {
		case psNotEnforced:
			fw = "not enforced"
		case psNotRunning:
			fw = "-"
		case fwBypassed:
			fw += " until " + tableTime(a.BypassUntil)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(a.Agent), orDash(a.Project), shortID(a.ContainerID),
			orDash(a.State), reg, a.Session, fw)
	}
	return tw.Flush()
}

// writeUnknown notes, on stderr, why columns say unknown: one line when
// the control plane did not answer at all, else one per view.
func writeUnknown(w io.Writer, unknown map[string]string) {
	if len(unknown) == 0 {
		return
	}
	all := len(unknown) == 3 && unknown[psRegistry] == unknown[psSessions] && unknown[psSessions] == unknown[psFirewall]
	if all {
		fmt.Fprintf(w, "note: REGISTERED, SESSION and FIREWALL are unknown: %s\n", flat(unknown[psRegistry]))
		return
	}
	column := map[string]string{psRegistry: "REGISTERED", psSessions: "SESSION", psFirewall: "FIREWALL"}
	for _, k := range []string{psRegistry, psSessions, psFirewall} {
		if why, ok := unknown[k]; ok {
			fmt.Fprintf(w, "note: %s is unknown: %s\n", column[k], flat(why))
		}
	}
}

// flat puts a multi-line error on one line, whole (the notes are the only
// place the reason shows).
func flat(s string) string { return strings.Join(strings.Fields(s), " ") }
