package clawkercli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cpboot"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// StatusReport is `controlplane status --format json`.
type StatusReport struct {
	// Container is "running" when Docker runs the clawker-controlplane
	// container, "stopped" otherwise (also when there is none).
	Container string        `json:"container"`
	Healthz   *HealthReport `json:"healthz,omitempty"`
	// OutsideDocker is set when no container runs but a control plane
	// answers on the health port anyway: one started as a host process
	// (scripts/up.sh before the container bootstrap, or a test).
	OutsideDocker bool `json:"outside_docker,omitempty"`
	// Firewall is the firewall's state as the AdminService reports it,
	// asked only once /healthz is green.
	Firewall *FirewallSummary `json:"firewall,omitempty"`
	// Bootstrap is what `controlplane up` did before the status was taken.
	Bootstrap *cpboot.Result `json:"bootstrap,omitempty"`
}

// FirewallSummary is the firewall part of a StatusReport.
type FirewallSummary struct {
	Enabled bool `json:"enabled"`
	// Agents is how many agent containers the programs enforce; Rules how
	// many routes are installed.
	Agents int `json:"agents"`
	Rules  int `json:"rules"`
	// Error says why the state could not be read (then the rest is zero).
	Error string `json:"error,omitempty"`
}

// addFirewall asks the AdminService for the firewall's state when the
// control plane is healthy (and env asks for it).
func addFirewall(ctx context.Context, env Env, paths settings.Paths, s settings.Settings, rep *StatusReport) {
	if !env.AskFirewall || rep.Healthz == nil || !rep.Healthz.OK {
		return
	}
	fw := &FirewallSummary{}
	rep.Firewall = fw
	cl, err := adminclient.Dial(ctx, paths, s, adminclient.WithOAuth())
	if err != nil {
		fw.Error = err.Error()
		return
	}
	defer cl.Close()
	cctx, cancel := context.WithTimeout(ctx, adminclient.CallTimeout)
	defer cancel()
	resp, err := cl.FirewallStatus(cctx, &adminv1.FirewallStatusRequest{})
	if err != nil {
		fw.Error = rpcError("firewall status", cl.Addr(), err).Error()
		return
	}
	fw.Enabled, fw.Agents, fw.Rules = resp.GetEnabled(), len(resp.GetAgents()), int(resp.GetRules())
}

// HealthReport is the healthz part of a StatusReport.
type HealthReport struct {
	OK      bool                `json:"ok"`
	Status  string              `json:"status"`
	Failing []string            `json:"failing,omitempty"`
	Probes  []cpapi.ProbeResult `json:"probes,omitempty"`

	answered bool // a control plane's /healthz body came back
}

// status prints `controlplane status` without its image part to stdout.
func status(ctx context.Context, v *verb, stdout io.Writer) error {
	d, err := v.docker()
	if err != nil {
		return err
	}
	rep, err := collectStatus(ctx, d, v.s)
	if err != nil {
		return err
	}
	addFirewall(ctx, v.env, v.paths, v.s, &rep)
	return printStatus(stdout, rep, v.asJSON)
}

func printStatus(w io.Writer, rep StatusReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	writeStatus(w, rep)
	return nil
}

// collectStatus asks Docker whether the clawker-controlplane container
// runs and, when it does, asks its /healthz.
func collectStatus(ctx context.Context, d cpboot.Docker, s settings.Settings) (StatusReport, error) {
	st, err := cpboot.Inspect(ctx, d)
	if err != nil {
		return StatusReport{}, err
	}
	// Docker marks a container waiting to be restarted by its policy as
	// running and restarting: it is not running anything.
	if !st.Running || st.Restarting {
		rep := StatusReport{Container: "stopped"}
		if h := probeHealth(healthBase(s)); h.answered {
			rep.Healthz, rep.OutsideDocker = h, true
		}
		return rep, nil
	}
	return StatusReport{Container: "running", Healthz: probeHealth(healthBase(s))}, nil
}

// probeHealth asks /healthz.
func probeHealth(base string) *HealthReport {
	resp, err := httpClient.Get(base + "/healthz")
	if err != nil {
		return &HealthReport{Status: "no answer on " + strings.TrimPrefix(base, "http://")}
	}
	defer resp.Body.Close()
	var h cpapi.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return &HealthReport{Status: "unreadable answer: " + err.Error()}
	}
	return &HealthReport{
		answered: true,
		OK:       resp.StatusCode == http.StatusOK && h.Status == cpapi.StatusOK,
		Status:   h.Status,
		Failing:  h.Failing,
		Probes:   h.Probes,
	}
}

func writeStatus(w io.Writer, r StatusReport) {
	fmt.Fprintf(w, "Container: %s\n", r.Container)
	if r.Healthz == nil {
		return
	}
	outside := ""
	if r.OutsideDocker {
		outside = " (a control plane outside Docker answers)"
	}
	switch {
	case r.Healthz.OK:
		fmt.Fprintln(w, "Healthz: ✓"+outside)
	case len(r.Healthz.Failing) > 0:
		fmt.Fprintf(w, "Healthz: ✗ (failing: %s)\n", strings.Join(r.Healthz.Failing, ", "))
	default:
		fmt.Fprintf(w, "Healthz: ✗ (%s)\n", r.Healthz.Status)
	}
	switch fw := r.Firewall; {
	case fw == nil:
	case fw.Error != "":
		fmt.Fprintf(w, "Firewall: ✗ (%s)\n", fw.Error)
	case !fw.Enabled:
		fmt.Fprintln(w, "Firewall: off (firewall.enable: false)")
	default:
		fmt.Fprintf(w, "Firewall: ✓ (%d agents enforced)\nRules: %d active\n", fw.Agents, fw.Rules)
	}
}
