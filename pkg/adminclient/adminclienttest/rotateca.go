package adminclienttest

import (
	"context"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// FirewallRotateCA implements adminv1.AdminServiceServer.
func (s *Server) FirewallRotateCA(_ context.Context, req *adminv1.FirewallRotateCARequest) (*adminv1.FirewallRotateCAResponse, error) {
	return answer(s, "FirewallRotateCA", req, &adminv1.FirewallRotateCAResponse{})
}
