package clawkercli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// RotateCAReport is `firewall rotate-ca --format json`.
type RotateCAReport struct {
	Fingerprint         string `json:"fingerprint"`
	PreviousFingerprint string `json:"previous_fingerprint,omitempty"`
	// StillTrustingOld are the running agents ("project/agent") that
	// trust only the replaced CA; Fix recreates each, in the same order.
	StillTrustingOld []string `json:"still_trusting_old"`
	Fix              []string `json:"fix,omitempty"`
}

func rotateCACommand(env Env, format cli.Flag) *cli.Command {
	return &cli.Command{
		Name:  "rotate-ca",
		Usage: "replace the firewall CA (the one inspected names' certificates chain to) and list the agents still trusting the old one",
		Description: "Makes a new firewall CA in the firewall directory and hands it to the egress proxy: from now on the\n" +
			"names with path rules are presented with certificates of the new CA. Running agents were given the old\n" +
			"CA's certificate when they were created, so they refuse those certificates until they are recreated\n" +
			"(`clawker rm -f`, then `clawker run` again): rotate-ca lists them with the commands.",
		Flags:  []cli.Flag{format},
		Action: func(c *cli.Context) error { return firewallRotateCA(c, env) },
	}
}

func firewallRotateCA(c *cli.Context, env Env) error {
	return firewallCall(c, env, needs{format: true, noArgs: "firewall rotate-ca"}, func(ctx context.Context, v *verb, cl *adminclient.Client) error {
		resp, err := cl.FirewallRotateCA(ctx, &adminv1.FirewallRotateCARequest{})
		if err != nil {
			return rpcError("firewall rotate-ca", cl.Addr(), err)
		}
		rep := RotateCAReport{Fingerprint: resp.GetFingerprint(), PreviousFingerprint: resp.GetPreviousFingerprint(),
			StillTrustingOld: append([]string{}, resp.GetStillTrustingOld()...)}
		for _, a := range rep.StillTrustingOld {
			rep.Fix = append(rep.Fix, recreateCommand(a))
		}
		if v.asJSON {
			return writeJSON(env.Stdout, rep)
		}
		return writeRotateCA(env.Stdout, rep)
	})
}

// recreateCommand is how agent ("project/agent") is recreated: its image
// and command are the user's, so they are left to fill in.
func recreateCommand(agent string) string {
	project, name, ok := strings.Cut(agent, "/")
	if !ok {
		return "clawker rm -f --agent " + agent + " && clawker run --agent " + agent + " IMAGE [CMD...]"
	}
	return fmt.Sprintf("clawker rm -f --project %s --agent %s && clawker run --project %s --agent %s IMAGE [CMD...]", project, name, project, name)
}

// writeRotateCA prints `firewall rotate-ca`:
//
//	rotated the firewall CA
//	fingerprint  <new>
//	previous     <old>
//	1 running agent still trusts the old CA: ...
//	AGENT      RECREATE WITH
//	myapp/dev  clawker rm -f ... && clawker run ...
func writeRotateCA(w io.Writer, rep RotateCAReport) error {
	prev := rep.PreviousFingerprint
	if prev == "" {
		prev = "(none)"
	}
	fmt.Fprintf(w, "rotated the firewall CA\nfingerprint  %s\nprevious     %s\n", rep.Fingerprint, prev)
	n := len(rep.StillTrustingOld)
	if n == 0 {
		_, err := fmt.Fprintln(w, "No running agent trusts the old CA.")
		return err
	}
	says := "still trust the old CA: their inspected connections fail until they are recreated"
	if n == 1 {
		says = "still trusts the old CA: its inspected connections fail until it is recreated"
	}
	fmt.Fprintf(w, "%s %s\n", plural(n, "running agent"), says)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tRECREATE WITH")
	for i, a := range rep.StillTrustingOld {
		fmt.Fprintf(tw, "%s\t%s\n", a, rep.Fix[i])
	}
	return tw.Flush()
}
