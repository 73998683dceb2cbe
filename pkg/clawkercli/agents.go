package clawkercli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// AgentReport is one element of `controlplane agents --format json`. Unlike
// the table it carries full values; times are RFC 3339 with nanoseconds, in
// UTC, and null when the control plane did not send them.
type AgentReport struct {
	Agent        string     `json:"agent"`
	Project      string     `json:"project"`
	ContainerID  string     `json:"container_id"`
	Thumbprint   string     `json:"thumbprint"`
	Key          string     `json:"key"`
	RegisteredAt *time.Time `json:"registered_at"`
	LastSeen     *time.Time `json:"last_seen"`
	Connected    bool       `json:"connected"`
}

// shortIDLen is how much of a container ID or thumbprint the table shows,
// as docker ps does for container IDs.
const shortIDLen = 12

func agents(c *cli.Context, env Env) error {
	v, err := prologue(c, env, needs{format: true, noArgs: "controlplane agents", cp: true})
	if err != nil {
		return err
	}
	defer v.release()
	client, err := v.dialAdmin(c.Context)
	if err != nil {
		return err
	}
	defer client.Close()

	all, err := listAllAgents(c.Context, client)
	if err != nil {
		return fmt.Errorf("listing agents at %s: %w", client.Addr(), err)
	}
	list := agentReports(all)

	if v.asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(env.Stderr, "No agents registered")
		return nil
	}
	return writeAgents(env.Stdout, list)
}

// agentsPageSize is what the CLI asks per ListAgents call: the control
// plane's largest page, which it keeps under the 4 MiB a call may answer.
const agentsPageSize = 5000

// listAllAgents walks ListAgents page by page, each call with its own
// timeout, and returns every agent the pages held.
func listAllAgents(ctx context.Context, client *adminclient.Client) ([]*adminv1.Agent, error) {
	var all []*adminv1.Agent
	token := ""
	for {
		page, err := listAgentsPage(ctx, client, token)
		if err != nil {
			return nil, err
		}
		all = append(all, page.GetAgents()...)
		next := page.GetNextPageToken()
		if next == "" {
			return all, nil
		}
		if next == token || len(page.GetAgents()) == 0 {
			// A walk must move: a server answering the same place again
			// would loop forever.
			return nil, fmt.Errorf("the control plane answered page_token %q with no progress; upgrade or restart it", token)
		}
		token = next
	}
}

func listAgentsPage(ctx context.Context, client *adminclient.Client, token string) (*adminv1.ListAgentsResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, adminclient.CallTimeout)
	defer cancel()
	return client.ListAgents(ctx, &adminv1.ListAgentsRequest{PageSize: agentsPageSize, PageToken: token})
}

// agentReports converts and sorts by project, then agent name (then
// container, so the order is total even if the registry had duplicates).
func agentReports(in []*adminv1.Agent) []AgentReport {
	out := make([]AgentReport, 0, len(in)) // never nil: JSON shows [] not null
	for _, a := range in {
		out = append(out, AgentReport{
			Agent:        a.GetAgentName(),
			Project:      a.GetProject(),
			ContainerID:  a.GetContainerId(),
			Thumbprint:   a.GetThumbprint(),
			Key:          a.GetKey(),
			RegisteredAt: utcTime(a.GetRegisteredAt()),
			LastSeen:     utcTime(a.GetLastSeen()),
			Connected:    a.GetConnected(),
		})
	}
	sort.SliceStable(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if x.Project != y.Project {
			return x.Project < y.Project
		}
		if x.Agent != y.Agent {
			return x.Agent < y.Agent
		}
		return x.ContainerID < y.ContainerID
	})
	return out
}

func utcTime(ts *timestamppb.Timestamp) *time.Time {
	if ts == nil || ts.CheckValid() != nil {
		return nil
	}
	t := ts.AsTime().UTC()
	return &t
}

// writeAgents prints the table of `controlplane agents`:
//
//	AGENT   PROJECT  CONTAINER     THUMBPRINT    REGISTERED            LAST SEEN
//	dev     myapp    a1b2c3d4e5f6  9f8e7d6c5b4a  2026-05-12T09:14:02Z  2026-05-12T09:42:18Z
func writeAgents(w io.Writer, list []AgentReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tPROJECT\tCONTAINER\tTHUMBPRINT\tREGISTERED\tLAST SEEN")
	for _, a := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
			orDash(a.Agent), orDash(a.Project), orDash(shortID(a.ContainerID)), orDash(shortID(a.Thumbprint)),
			tableTime(a.RegisteredAt), tableTime(a.LastSeen))
	}
	return tw.Flush()
}

func shortID(s string) string {
	if len(s) > shortIDLen {
		return s[:shortIDLen]
	}
	return s
}

func tableTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339) // seconds; t is already UTC
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
