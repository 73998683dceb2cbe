package adminclienttest

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// defaultBypass is what the fake applies to a FirewallBypass without a
// timeout, as the control plane does.
const defaultBypass = 30 * time.Second

// firewallState is the fake firewall: what it was asked, and how it
// answers.
type firewallState struct {
	requests []proto.Message
	errs     map[string]error
	status   *adminv1.FirewallStatusResponse
	answers  map[string]proto.Message // by method, SetFirewallAnswer
	now      time.Time                // zero: the real clock
}

// FirewallRequests returns a copy of every Firewall* request served, in
// order.
func (s *Server) FirewallRequests() []proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]proto.Message, 0, len(s.fw.requests))
	for _, r := range s.fw.requests {
		out = append(out, proto.Clone(r))
	}
	return out
}

// SetFirewallError makes method (e.g. "FirewallEnable") answer err, which
// should be a status error; nil makes it succeed again. The request is
// still recorded.
func (s *Server) SetFirewallError(method string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fw.errs == nil {
		s.fw.errs = map[string]error{}
	}
	s.fw.errs[method] = err
}

// SetFirewallStatus sets what FirewallStatus answers (an empty, disabled
// status until set).
func (s *Server) SetFirewallStatus(st *adminv1.FirewallStatusResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fw.status = proto.Clone(st).(*adminv1.FirewallStatusResponse)
}

// SetFirewallAnswer sets what method (e.g. "FirewallAddRules") answers;
// until set, the rule and stack methods answer an empty response.
func (s *Server) SetFirewallAnswer(method string, resp proto.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fw.answers == nil {
		s.fw.answers = map[string]proto.Message{}
	}
	s.fw.answers[method] = proto.Clone(resp)
}

// SetClock fixes the time FirewallBypass counts its end from.
func (s *Server) SetClock(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fw.now = now
}

// record notes a Firewall* request and returns the error set for method.
func (s *Server) record(method string, req proto.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[method]++
	s.fw.requests = append(s.fw.requests, proto.Clone(req))
	return s.fw.errs[method]
}

// FirewallEnable implements adminv1.AdminServiceServer.
func (s *Server) FirewallEnable(_ context.Context, req *adminv1.FirewallEnableRequest) (*adminv1.FirewallEnableResponse, error) {
	if err := s.record("FirewallEnable", req); err != nil {
		return nil, err
	}
	return &adminv1.FirewallEnableResponse{}, nil
}

// FirewallDisable implements adminv1.AdminServiceServer.
func (s *Server) FirewallDisable(_ context.Context, req *adminv1.FirewallDisableRequest) (*adminv1.FirewallDisableResponse, error) {
	if err := s.record("FirewallDisable", req); err != nil {
		return nil, err
	}
	return &adminv1.FirewallDisableResponse{}, nil
}

// FirewallBypass implements adminv1.AdminServiceServer: the bypass ends
// the asked timeout (30s when none) after the clock set by SetClock.
func (s *Server) FirewallBypass(_ context.Context, req *adminv1.FirewallBypassRequest) (*adminv1.FirewallBypassResponse, error) {
	if err := s.record("FirewallBypass", req); err != nil {
		return nil, err
	}
	d := req.GetTimeout().AsDuration()
	if d == 0 {
		d = defaultBypass
	}
	s.mu.Lock()
	now := s.fw.now
	s.mu.Unlock()
	if now.IsZero() {
		now = time.Now()
	}
	return &adminv1.FirewallBypassResponse{Until: timestamppb.New(now.Add(d)), Timeout: durationpb.New(d)}, nil
}

// FirewallSyncRoutes implements adminv1.AdminServiceServer.
func (s *Server) FirewallSyncRoutes(_ context.Context, req *adminv1.FirewallSyncRoutesRequest) (*adminv1.FirewallSyncRoutesResponse, error) {
	if err := s.record("FirewallSyncRoutes", req); err != nil {
		return nil, err
	}
	return &adminv1.FirewallSyncRoutesResponse{Routes: uint32(len(req.GetRoutes()))}, nil
}

// FirewallStatus implements adminv1.AdminServiceServer.
func (s *Server) FirewallStatus(_ context.Context, req *adminv1.FirewallStatusRequest) (*adminv1.FirewallStatusResponse, error) {
	if err := s.record("FirewallStatus", req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fw.status == nil {
		return &adminv1.FirewallStatusResponse{}, nil
	}
	return proto.Clone(s.fw.status).(*adminv1.FirewallStatusResponse), nil
}

// answer records a request of method and returns the answer set for it
// (a fresh zero resp when none), or the error set for it.
func answer[T proto.Message](s *Server, method string, req proto.Message, zero T) (T, error) {
	if err := s.record(method, req); err != nil {
		var none T
		return none, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.fw.answers[method].(T); ok {
		return proto.Clone(a).(T), nil
	}
	return zero, nil
}

// FirewallInit implements adminv1.AdminServiceServer.
func (s *Server) FirewallInit(_ context.Context, req *adminv1.FirewallInitRequest) (*adminv1.FirewallInitResponse, error) {
	return answer(s, "FirewallInit", req, &adminv1.FirewallInitResponse{})
}

// FirewallRemove implements adminv1.AdminServiceServer.
func (s *Server) FirewallRemove(_ context.Context, req *adminv1.FirewallRemoveRequest) (*adminv1.FirewallRemoveResponse, error) {
	return answer(s, "FirewallRemove", req, &adminv1.FirewallRemoveResponse{})
}

// FirewallAddRules implements adminv1.AdminServiceServer.
func (s *Server) FirewallAddRules(_ context.Context, req *adminv1.FirewallAddRulesRequest) (*adminv1.FirewallAddRulesResponse, error) {
	return answer(s, "FirewallAddRules", req, &adminv1.FirewallAddRulesResponse{})
}

// FirewallRemoveRule implements adminv1.AdminServiceServer.
func (s *Server) FirewallRemoveRule(_ context.Context, req *adminv1.FirewallRemoveRuleRequest) (*adminv1.FirewallRemoveRuleResponse, error) {
	return answer(s, "FirewallRemoveRule", req, &adminv1.FirewallRemoveRuleResponse{})
}

// FirewallListRules implements adminv1.AdminServiceServer.
func (s *Server) FirewallListRules(_ context.Context, req *adminv1.FirewallListRulesRequest) (*adminv1.FirewallListRulesResponse, error) {
	return answer(s, "FirewallListRules", req, &adminv1.FirewallListRulesResponse{})
}

// FirewallReload implements adminv1.AdminServiceServer.
func (s *Server) FirewallReload(_ context.Context, req *adminv1.FirewallReloadRequest) (*adminv1.FirewallReloadResponse, error) {
	return answer(s, "FirewallReload", req, &adminv1.FirewallReloadResponse{})
}
