package grpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/pkg/egress"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// The AdminService's firewall methods. Each checks its input, asks the
// firewall actor (whose mailbox is the action queue, so two RPCs never
// interleave their map updates) within the request timeout, and turns the
// actor's typed errors into status codes. Every mutation is logged with
// event=firewall_<verb>, whether it was applied or refused.

// minBypass is the shortest bypass accepted: the BPF side counts in
// nanoseconds, but a bypass shorter than this is a typo, not a request.
const minBypass = time.Second

// containerIDLen is the length of a full Docker container id (hex).
const containerIDLen = 64

// FirewallEnable clears a container's disable and bypass.
func (s *adminService) FirewallEnable(_ context.Context, req *adminv1.FirewallEnableRequest) (*adminv1.FirewallEnableResponse, error) {
	id := req.GetContainerId()
	err := checkContainerID(id)
	if err == nil {
		_, err = s.mutate(&firewall.Enable{ContainerID: id})
	}
	s.logMutation("enable", err, zap.String("container_id", id))
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallEnableResponse{}, nil
}

// FirewallDisable lets a container's traffic through until FirewallEnable.
func (s *adminService) FirewallDisable(_ context.Context, req *adminv1.FirewallDisableRequest) (*adminv1.FirewallDisableResponse, error) {
	id := req.GetContainerId()
	err := checkContainerID(id)
	if err == nil {
		_, err = s.mutate(&firewall.Disable{ContainerID: id})
	}
	s.logMutation("disable", err, zap.String("container_id", id))
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallDisableResponse{}, nil
}

// FirewallBypass lets a container's traffic through for the asked timeout
// (firewall.DefaultBypass when none) and answers when it ends.
func (s *adminService) FirewallBypass(_ context.Context, req *adminv1.FirewallBypassRequest) (*adminv1.FirewallBypassResponse, error) {
	id := req.GetContainerId()
	err := checkContainerID(id)
	var d time.Duration
	if err == nil {
		d, err = bypassDuration(req.GetTimeout())
	}
	var res *firewall.Result
	if err == nil {
		res, err = s.mutate(&firewall.Bypass{ContainerID: id, Duration: d})
	}
	fields := []zap.Field{zap.String("container_id", id), zap.Duration("timeout", d)}
	if err == nil {
		fields = append(fields, zap.Time("until", res.Until))
	}
	s.logMutation("bypass", err, fields...)
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallBypassResponse{Until: timestamppb.New(res.Until), Timeout: durationpb.New(d)}, nil
}

// FirewallSyncRoutes replaces the whole route set.
func (s *adminService) FirewallSyncRoutes(_ context.Context, req *adminv1.FirewallSyncRoutesRequest) (*adminv1.FirewallSyncRoutesResponse, error) {
	routes, err := convertRoutes(req.GetRoutes())
	if err == nil {
		_, err = s.mutate(&firewall.SyncRoutes{Routes: routes})
	}
	s.logMutation("sync_routes", err, zap.Int("routes", len(req.GetRoutes())))
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallSyncRoutesResponse{Routes: uint32(len(routes))}, nil
}

// FirewallStatus reports what the programs enforce.
func (s *adminService) FirewallStatus(context.Context, *adminv1.FirewallStatusRequest) (*adminv1.FirewallStatusResponse, error) {
	res, err := s.askFirewall(&firewall.GetStatus{})
	if err != nil {
		return nil, err
	}
	st, ok := res.(*firewall.Status)
	if !ok {
		return nil, status.Errorf(codes.Internal, "firewall: unexpected answer %T to GetStatus", res)
	}
	out := &adminv1.FirewallStatusResponse{
		Enabled:    st.Enabled,
		RouteCount: uint32(st.Routes),
		Agents:     make([]*adminv1.FirewallAgent, 0, len(st.Agents)),
	}
	for _, a := range st.Agents {
		fa := &adminv1.FirewallAgent{ContainerId: a.ContainerID, CgroupId: a.CgroupID, Disabled: a.Disabled}
		if !a.BypassUntil.IsZero() {
			fa.BypassUntil = timestamppb.New(a.BypassUntil)
		}
		out.Agents = append(out.Agents, fa)
	}
	return out, nil
}

// mutate asks the firewall for a mutation answered with *firewall.Result
// and returns it, or the status error its Err maps to.
func (s *adminService) mutate(msg interface{}) (*firewall.Result, error) {
	res, err := s.askFirewall(msg)
	if err != nil {
		return nil, err
	}
	r, ok := res.(*firewall.Result)
	if !ok {
		return nil, status.Errorf(codes.Internal, "firewall: unexpected answer %T to %T", res, msg)
	}
	if r.Err != nil {
		return nil, firewallStatus(r.Err)
	}
	return r, nil
}

// askFirewall asks the firewall actor within the request timeout. No
// answer in time (or no actor to answer) is Unavailable: the CP is
// overloaded, restarting the firewall or shutting down, and a retry may
// succeed.
func (s *adminService) askFirewall(msg interface{}) (interface{}, error) {
	if s.firewall == nil {
		return nil, status.Error(codes.Unavailable, "firewall: this control plane runs no firewall actor")
	}
	res, err := s.ask(s.firewall, msg)
	switch {
	case errors.Is(err, actor.ErrTimeout):
		return nil, status.Errorf(codes.Unavailable, "firewall: no answer within %s; the control plane may be busy or shutting down, retry", s.timeout)
	case errors.Is(err, actor.ErrDeadLetter):
		return nil, status.Error(codes.Unavailable, "firewall: the firewall actor is not running (restarting, or the control plane is shutting down); retry")
	case err != nil:
		return nil, status.Errorf(codes.Internal, "firewall: %v", err)
	}
	return res, nil
}

// firewallStatus maps the firewall actor's errors to status codes; the
// message is the actor's, which already says what to do.
func firewallStatus(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, firewall.ErrFirewallDisabled):
		code = codes.FailedPrecondition
	case errors.Is(err, firewall.ErrQueueClosed):
		code = codes.Unavailable
	case errors.Is(err, firewall.ErrUnknownContainer):
		code = codes.NotFound
	case errors.Is(err, firewall.ErrBadDuration):
		code = codes.InvalidArgument
	}
	return status.Error(code, err.Error())
}

// logMutation writes the one line each mutation leaves: Info when it was
// applied, Warn with its code and error when it was refused.
func (s *adminService) logMutation(verb string, err error, fields ...zap.Field) {
	fields = append([]zap.Field{zap.String("event", "firewall_"+verb)}, fields...)
	if err == nil {
		s.log.Info("firewall "+verb, fields...)
		return
	}
	fields = append(fields, zap.String("code", status.Code(err).String()), zap.String("error", status.Convert(err).Message()))
	s.log.Warn("firewall "+verb+" refused", fields...)
}

// checkContainerID insists on a full Docker id: the firewall knows
// containers by it, and a short or mistyped id would only come back as
// NotFound.
func checkContainerID(id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "container_id: required")
	}
	if len(id) != containerIDLen || !isLowerHex(id) {
		return status.Errorf(codes.InvalidArgument, "container_id: %q is not a full container id (%d lowercase hex digits)", id, containerIDLen)
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// bypassDuration reads a bypass timeout: unset or zero is
// firewall.DefaultBypass, otherwise minBypass..egress.MaxBypass.
func bypassDuration(t *durationpb.Duration) (time.Duration, error) {
	if t == nil {
		return firewall.DefaultBypass, nil
	}
	if err := t.CheckValid(); err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "timeout: %v", err)
	}
	d := t.AsDuration()
	switch {
	case d == 0:
		return firewall.DefaultBypass, nil
	case d < minBypass || d > egress.MaxBypass:
		return 0, status.Errorf(codes.InvalidArgument, "timeout: %s is out of range: give %s to %s, or 0 for the default %s",
			d, minBypass, fmtDuration(egress.MaxBypass), firewall.DefaultBypass)
	}
	return d, nil
}

// fmtDuration prints whole hours as "1h" rather than "1h0m0s".
func fmtDuration(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return d.String()
}

// convertRoutes checks every route and converts the set; errors name the
// offending route's field.
func convertRoutes(in []*adminv1.Route) ([]egress.Route, error) {
	if len(in) > egress.MaxRoutes {
		return nil, status.Errorf(codes.InvalidArgument, "routes: %d routes exceed the maximum of %d", len(in), egress.MaxRoutes)
	}
	type key struct {
		identity uint32
		port     uint16
		proto    egress.Proto
	}
	seen := make(map[key]int, len(in))
	out := make([]egress.Route, 0, len(in))
	for i, r := range in {
		if r.GetPort() < 1 || r.GetPort() > 65535 {
			return nil, status.Errorf(codes.InvalidArgument, "routes[%d].port: %d is out of range 1..65535", i, r.GetPort())
		}
		if r.GetListenerPort() < 1 || r.GetListenerPort() > 65535 {
			return nil, status.Errorf(codes.InvalidArgument, "routes[%d].listener_port: %d is out of range 1..65535", i, r.GetListenerPort())
		}
		var proto egress.Proto
		switch r.GetProto() {
		case adminv1.Protocol_PROTOCOL_TCP:
			proto = egress.TCP
		case adminv1.Protocol_PROTOCOL_UDP:
			proto = egress.UDP
		default:
			return nil, status.Errorf(codes.InvalidArgument, "routes[%d].proto: %s is not PROTOCOL_TCP or PROTOCOL_UDP", i, r.GetProto())
		}
		er := egress.Route{Identity: r.GetIdentity(), Port: uint16(r.GetPort()), Proto: proto, ListenerPort: uint16(r.GetListenerPort())}
		k := key{er.Identity, er.Port, er.Proto}
		if j, dup := seen[k]; dup {
			return nil, status.Errorf(codes.InvalidArgument, "routes[%d]: identity %d, port %d, %s is already routed by routes[%d]", i, er.Identity, er.Port, er.Proto, j)
		}
		seen[k] = i
		out = append(out, er)
	}
	return out, nil
}
