package grpc

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

type adminService struct {
	adminv1.UnimplementedAdminServiceServer
	peers
	now func() time.Time // GetSystemTime's clock; nil means time.Now
}

// ListAgents returns every registered agent and whether its Session is up.
func (s *adminService) ListAgents(ctx context.Context, _ *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	list, err := s.registry.List(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "registry: %v", err)
	}
	if list.Err != nil {
		return nil, status.Errorf(codes.Internal, "registry: %v", list.Err)
	}
	connected := map[string]bool{}
	if c, err := s.sessions.ListConnected(ctx); err == nil {
		connected = c.Keys
	}
	out := &adminv1.ListAgentsResponse{Agents: make([]*adminv1.Agent, 0, len(list.Agents))}
	for _, a := range list.Agents {
		out.Agents = append(out.Agents, &adminv1.Agent{
			Key: a.Key, Project: a.Project, AgentName: a.AgentName, ContainerId: a.ContainerID, Thumbprint: a.Thumbprint,
			RegisteredAt: timestamppb.New(a.RegisteredAt), LastSeen: timestamppb.New(a.LastSeen), Connected: connected[a.Key],
		})
	}
	return out, nil
}

// GetSystemTime returns the CP's clock, for the CLI's clock-sync gate.
func (s *adminService) GetSystemTime(context.Context, *adminv1.GetSystemTimeRequest) (*adminv1.GetSystemTimeResponse, error) {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	return &adminv1.GetSystemTimeResponse{Now: timestamppb.New(now())}, nil
}
