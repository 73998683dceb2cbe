package grpc

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// ListAgents pages (admin.proto): the default and largest page sizes, and
// a bound on a page's encoded size well under the 4 MiB a gRPC client
// receives by default (the CLI's limit), whatever the names' lengths.
const (
	defaultAgentsPage = 1000
	maxAgentsPage     = 5000
	maxAgentsPageSize = 2 << 20
)

// agentWireOverhead bounds what an Agent costs on the wire beyond its
// strings' bytes: six tags and length prefixes for the strings and the
// element, two timestamps, the bool.
const agentWireOverhead = 6*6 + 2*(2+11+6) + 2

// listAgentsPage answers one ListAgents page from the registry's memory:
// the agents after the token's place in (project, agent name) order. A
// token names a place, not an offset, so bindings added or removed
// meanwhile do not shift the walk: one that exists for the whole walk is
// listed exactly once.
func (s *adminService) listAgentsPage(ctx context.Context, req *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	after, err := registry.ParsePageToken(req.GetPageToken())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument,
			"page_token: %v; pass the next_page_token of the previous answer unchanged, or none for the first page", err)
	}
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = defaultAgentsPage
	case size > maxAgentsPage:
		size = maxAgentsPage
	}
	page, err := s.registry.ListPage(ctx, registry.List{After: after, Limit: size})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "registry: %v", err)
	}
	if page.Err != nil {
		return nil, status.Errorf(codes.Internal, "registry: %v", page.Err)
	}
	agents, more := fitPage(page.Agents, page.More)
	connected := map[string]bool{}
	if len(agents) > 0 {
		if c, err := s.sessions.ListConnected(ctx); err == nil {
			connected = c.Keys
		}
	}
	out := &adminv1.ListAgentsResponse{Agents: make([]*adminv1.Agent, len(agents)), Total: uint32(page.Total)}
	// One allocation for the page's messages and one for its timestamps,
	// rather than three per agent.
	msgs := make([]adminv1.Agent, len(agents))
	times := make([]timestamppb.Timestamp, 2*len(agents))
	for i, a := range agents {
		reg, seen := &times[2*i], &times[2*i+1]
		reg.Seconds, reg.Nanos = a.RegisteredAt.Unix(), int32(a.RegisteredAt.Nanosecond())
		seen.Seconds, seen.Nanos = a.LastSeen.Unix(), int32(a.LastSeen.Nanosecond())
		m := &msgs[i]
		m.Key, m.Project, m.AgentName, m.ContainerId, m.Thumbprint = a.Key, a.Project, a.AgentName, a.ContainerID, a.Thumbprint
		m.RegisteredAt, m.LastSeen, m.Connected = reg, seen, connected[a.Key]
		out.Agents[i] = m
	}
	if more && len(agents) > 0 {
		last := agents[len(agents)-1]
		out.NextPageToken = registry.Cursor{Project: last.Project, AgentName: last.AgentName}.Token()
	}
	return out, nil
}

// fitPage cuts a page to maxAgentsPageSize on the wire (at least one
// agent, which alone is far under the limit a binding's names allow); more
// says whether agents follow what it keeps.
func fitPage(agents []agentdb.Agent, more bool) ([]agentdb.Agent, bool) {
	total := 0
	for i, a := range agents {
		total += agentWireOverhead + len(a.Key) + len(a.Project) + len(a.AgentName) + len(a.ContainerID) + len(a.Thumbprint)
		if total > maxAgentsPageSize && i > 0 {
			return agents[:i], true
		}
	}
	return agents, more
}
