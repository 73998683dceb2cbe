package grpc

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

type adminService struct {
	adminv1.UnimplementedAdminServiceServer
	peers
	now func() time.Time // GetSystemTime's clock; nil means time.Now
}

// ListAgents returns one page of the registered agents and whether each
// one's Session is up (admin_list.go).
func (s *adminService) ListAgents(ctx context.Context, req *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	return s.listAgentsPage(ctx, req)
}

// GetSystemTime returns the CP's clock, for the CLI's clock-sync gate.
func (s *adminService) GetSystemTime(context.Context, *adminv1.GetSystemTimeRequest) (*adminv1.GetSystemTimeResponse, error) {
	now := time.Now
	if s.now != nil {
		now = s.now
	}
	return &adminv1.GetSystemTimeResponse{Now: timestamppb.New(now())}, nil
}
