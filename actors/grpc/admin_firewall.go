package grpc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/naming"
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
func (s *adminService) FirewallEnable(ctx context.Context, req *adminv1.FirewallEnableRequest) (*adminv1.FirewallEnableResponse, error) {
	id := req.GetContainerId()
	err := checkContainerID(id)
	if err == nil {
		_, err = s.mutate(ctx, &firewall.Enable{ContainerID: id})
	}
	s.logMutation("enable", err, zap.String("container_id", id))
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallEnableResponse{}, nil
}

// FirewallDisable lets a container's traffic through until FirewallEnable.
func (s *adminService) FirewallDisable(ctx context.Context, req *adminv1.FirewallDisableRequest) (*adminv1.FirewallDisableResponse, error) {
	id := req.GetContainerId()
	err := checkContainerID(id)
	if err == nil {
		_, err = s.mutate(ctx, &firewall.Disable{ContainerID: id})
	}
	s.logMutation("disable", err, zap.String("container_id", id))
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallDisableResponse{}, nil
}

// FirewallBypass lets a container's traffic through for the asked timeout
// (firewall.DefaultBypass when none) and answers when it ends.
func (s *adminService) FirewallBypass(ctx context.Context, req *adminv1.FirewallBypassRequest) (*adminv1.FirewallBypassResponse, error) {
	id := req.GetContainerId()
	err := checkContainerID(id)
	var d time.Duration
	if err == nil {
		d, err = bypassDuration(req.GetTimeout())
	}
	var res *firewall.Result
	if err == nil {
		res, err = s.mutate(ctx, &firewall.Bypass{ContainerID: id, Duration: d})
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
func (s *adminService) FirewallSyncRoutes(ctx context.Context, req *adminv1.FirewallSyncRoutesRequest) (*adminv1.FirewallSyncRoutesResponse, error) {
	routes, err := convertRoutes(req.GetRoutes())
	if err == nil {
		_, err = s.mutate(ctx, &firewall.SyncRoutes{Routes: routes})
	}
	s.logMutation("sync_routes", err, zap.Int("routes", len(req.GetRoutes())))
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallSyncRoutesResponse{Routes: uint32(len(routes))}, nil
}

// FirewallStatus reports what the programs enforce.
func (s *adminService) FirewallStatus(ctx context.Context, _ *adminv1.FirewallStatusRequest) (*adminv1.FirewallStatusResponse, error) {
	st, err := s.firewall.Status(ctx)
	if err != nil {
		return nil, s.firewallUnanswered(err)
	}
	out := &adminv1.FirewallStatusResponse{
		Enabled:      st.Enabled,
		RouteCount:   uint32(st.Routes),
		Agents:       make([]*adminv1.FirewallAgent, 0, len(st.Agents)),
		Stack:        stackMembers(st.Stack),
		Network:      st.Network,
		Subnet:       st.Subnet,
		Rules:        uint32(st.Rules),
		AgentToAgent: st.AgentToAgent,
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

// mutate asks the firewall for a mutation and returns its answer, or the
// status error the request's failure or the answer's Err maps to.
func (s *adminService) mutate(ctx context.Context, m firewall.Mutation) (*firewall.Result, error) {
	r, err := s.firewall.Mutate(ctx, m)
	if err != nil {
		return nil, s.firewallUnanswered(err)
	}
	if r.Err != nil {
		return nil, firewallStatus(r.Err)
	}
	return r, nil
}

// firewallUnanswered maps a request to the firewall that got no proper
// answer to a status. No answer in time (or no actor to answer) is
// Unavailable: the CP is overloaded, restarting the firewall or shutting
// down, and a retry may succeed; an answer of the wrong type is Internal.
func (s *adminService) firewallUnanswered(err error) error {
	switch {
	case errors.Is(err, request.ErrNoActor):
		return status.Error(codes.Unavailable, "firewall: this control plane runs no firewall actor")
	case errors.Is(err, actor.ErrTimeout):
		return status.Errorf(codes.Unavailable, "firewall: no answer within %s; the control plane may be busy or shutting down, retry", s.firewall.Timeout())
	case errors.Is(err, actor.ErrDeadLetter):
		return status.Error(codes.Unavailable, "firewall: the firewall actor is not running (restarting, or the control plane is shutting down); retry")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Errorf(codes.Internal, "firewall: %v", err)
}

// firewallStatus maps the firewall actor's errors to status codes, with a
// stable reason where a client may act on it; the message is the actor's,
// which already says what to do.
func firewallStatus(err error) error {
	code, reason := codes.Internal, ""
	switch {
	case errors.Is(err, firewall.ErrRuleStore):
		// Before the field errors: a bad rule in the stored file is the
		// store's problem, not the request's.
		reason = ReasonRuleStore
	case len(fieldErrors(err)) > 0:
		return ruleInvalid(err)
	case errors.Is(err, firewall.ErrFirewallDisabled):
		code = codes.FailedPrecondition
	case errors.Is(err, firewall.ErrQueueClosed):
		code, reason = codes.Unavailable, ReasonQueueClosed
	case errors.Is(err, firewall.ErrUnknownContainer):
		code = codes.NotFound
	case errors.Is(err, firewall.ErrBadDuration):
		code = codes.InvalidArgument
	case errors.Is(err, firewall.ErrStackUnhealthy):
		code, reason = codes.Unavailable, ReasonStackUnhealthy
	}
	return reasonError(code, reason, err.Error())
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

// The stable reasons of the firewall's errors, attached to the status as
// an errdetails.ErrorInfo in domain ErrorDomain, so a client can tell
// them apart without parsing the message.
const (
	ErrorDomain = "clawker.dev"
	// ReasonRuleInvalid: a rule is malformed (InvalidArgument); the
	// message has one line per bad field.
	ReasonRuleInvalid = "RULE_INVALID"
	// ReasonQueueClosed: the control plane drains (Unavailable).
	ReasonQueueClosed = "QUEUE_CLOSED"
	// ReasonStackUnhealthy: a stack member is not healthy (Unavailable).
	ReasonStackUnhealthy = "STACK_UNHEALTHY"
	// ReasonRuleStore: the rule store cannot be read or written
	// (Internal).
	ReasonRuleStore = "RULE_STORE"
)

// resolveTimeout bounds FirewallResolveHostname's lookup.
const resolveTimeout = 5 * time.Second

// lookupFunc resolves a name as net.Resolver.LookupNetIP does.
type lookupFunc func(ctx context.Context, network, host string) ([]netip.Addr, error)

// lookupNetIP holds the resolver: the system's, or a test's stand-in for
// DNS (atomic: a test swaps it while the server runs).
var lookupNetIP atomic.Pointer[lookupFunc]

func init() {
	f := lookupFunc(net.DefaultResolver.LookupNetIP)
	lookupNetIP.Store(&f)
}

// FirewallInit brings the stack up; the answer carries the members as
// they stand afterwards.
func (s *adminService) FirewallInit(ctx context.Context, _ *adminv1.FirewallInitRequest) (*adminv1.FirewallInitResponse, error) {
	_, err := s.mutate(ctx, &firewall.StackUp{})
	s.logMutation("init", err)
	if err != nil {
		return nil, err
	}
	out := &adminv1.FirewallInitResponse{}
	// The members' state is a courtesy: the bring-up succeeded either way.
	if st, err := s.firewall.Status(ctx); err == nil {
		out.Stack = stackMembers(st.Stack)
	}
	return out, nil
}

// FirewallRemove stops the stack.
func (s *adminService) FirewallRemove(ctx context.Context, req *adminv1.FirewallRemoveRequest) (*adminv1.FirewallRemoveResponse, error) {
	_, err := s.mutate(ctx, &firewall.StackDown{Force: req.GetForce()})
	s.logMutation("remove", err, zap.Bool("force", req.GetForce()))
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallRemoveResponse{}, nil
}

// FirewallAddRules adds a batch of rules: all of them or, when one is
// malformed, none.
func (s *adminService) FirewallAddRules(ctx context.Context, req *adminv1.FirewallAddRulesRequest) (*adminv1.FirewallAddRulesResponse, error) {
	rules, err := convertRules(req.GetRules())
	var res *firewall.RulesResult
	if err == nil {
		res, err = s.askRules(ctx, &firewall.AddRules{Rules: rules})
	}
	if err == nil && len(res.Statuses) != len(rules) {
		err = status.Errorf(codes.Internal, "firewall: %d statuses for %d rules", len(res.Statuses), len(rules))
	}
	s.logMutation("add_rules", err, zap.Int("rules", len(req.GetRules())))
	if err != nil {
		return nil, err
	}
	stored := make(map[string]egressrules.Entry, len(res.Rules))
	for _, e := range res.Rules {
		stored[e.Key()] = e
	}
	out := &adminv1.FirewallAddRulesResponse{Total: uint32(len(res.Rules))}
	for i, r := range rules {
		out.Statuses = append(out.Statuses, ruleStatus(res.Statuses[i]))
		e, ok := stored[r.Key()]
		if !ok { // not in the store it just wrote: report the rule as asked
			e = egressrules.Entry{Rule: r}
		}
		out.Rules = append(out.Rules, egressRule(e))
	}
	return out, nil
}

// FirewallRemoveRule removes one rule, or all of them; a rule that is not
// stored is a status, not an error.
func (s *adminService) FirewallRemoveRule(ctx context.Context, req *adminv1.FirewallRemoveRuleRequest) (*adminv1.FirewallRemoveRuleResponse, error) {
	msg, err := removeRequest(req)
	var res *firewall.RulesResult
	if err == nil {
		res, err = s.askRules(ctx, msg)
	}
	if err == nil && len(res.Statuses) != 1 {
		err = status.Errorf(codes.Internal, "firewall: %d statuses for one removal", len(res.Statuses))
	}
	fields := []zap.Field{zap.Bool("all", msg.All)}
	if !msg.All {
		fields = append(fields, zap.String("rule", msg.Rule.Key()))
	}
	if msg.Path != "" {
		fields = append(fields, zap.String("path", msg.Path))
	}
	if err == nil {
		fields = append(fields, zap.String("status", string(res.Statuses[0])), zap.Int("removed", res.Removed))
	}
	s.logMutation("remove_rule", err, fields...)
	if err != nil {
		return nil, err
	}
	out := &adminv1.FirewallRemoveRuleResponse{Status: ruleStatus(res.Statuses[0]), Removed: uint32(res.Removed), Total: uint32(len(res.Rules))}
	if !msg.All {
		r := egressRule(egressrules.Entry{Rule: msg.Rule})
		r.Action = ""
		out.Rule = r
	}
	return out, nil
}

// FirewallListRules lists the store in its canonical order; with a
// project, only the rules that apply to its agents (global and its own).
func (s *adminService) FirewallListRules(ctx context.Context, req *adminv1.FirewallListRulesRequest) (*adminv1.FirewallListRulesResponse, error) {
	project := req.GetProject()
	if project != "" && !naming.ValidProject(project) {
		return nil, reasonError(codes.InvalidArgument, ReasonRuleInvalid,
			fmt.Sprintf("project %q: not a project name (%s)", project, naming.ProjectRule))
	}
	res, err := s.askRules(ctx, &firewall.ListRules{})
	if err != nil {
		return nil, err
	}
	out := &adminv1.FirewallListRulesResponse{Rules: make([]*adminv1.EgressRule, 0, len(res.Rules))}
	for _, e := range res.Rules {
		if project != "" && !e.AppliesTo(project) {
			continue
		}
		out.Rules = append(out.Rules, egressRule(e))
	}
	return out, nil
}

// FirewallReload reads the store again and hands it to the stack.
func (s *adminService) FirewallReload(ctx context.Context, _ *adminv1.FirewallReloadRequest) (*adminv1.FirewallReloadResponse, error) {
	res, err := s.askRules(ctx, &firewall.ReloadRules{})
	var fields []zap.Field
	if err == nil {
		fields = append(fields, zap.Int("rules", len(res.Rules)))
	}
	s.logMutation("reload", err, fields...)
	if err != nil {
		return nil, err
	}
	return &adminv1.FirewallReloadResponse{Rules: uint32(len(res.Rules))}, nil
}

// FirewallResolveHostname looks a name up from the control plane's own
// network namespace. The lookup runs in the handler, not on the firewall's
// mailbox: a DNS wait of up to resolveTimeout must not hold up the action
// queue behind it.
func (s *adminService) FirewallResolveHostname(ctx context.Context, req *adminv1.FirewallResolveHostnameRequest) (*adminv1.FirewallResolveHostnameResponse, error) {
	host := strings.TrimSuffix(strings.TrimSpace(req.GetHostname()), ".")
	if host == "" {
		return nil, status.Error(codes.InvalidArgument, "hostname: required: give a name such as example.com")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return &adminv1.FirewallResolveHostnameResponse{Addresses: []string{ip.String()}}, nil
	}
	if len(host) > 253 || strings.ContainsAny(host, " \t/:@") {
		return nil, status.Errorf(codes.InvalidArgument, "hostname: %q is not a hostname; give a name such as example.com", req.GetHostname())
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	ips, err := (*lookupNetIP.Load())(ctx, "ip", host)
	var dnsErr *net.DNSError
	switch {
	case err == nil && len(ips) == 0, errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return nil, status.Errorf(codes.NotFound, "hostname: %s does not resolve from the control plane", host)
	case ctx.Err() != nil || errors.As(err, &dnsErr) && dnsErr.IsTimeout:
		return nil, status.Errorf(codes.DeadlineExceeded, "hostname: no answer for %s within %s from the control plane's resolver", host, resolveTimeout)
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "hostname: looking up %s: %v", host, err)
	}
	seen := make(map[netip.Addr]bool, len(ips))
	addrs := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		if ip = ip.Unmap(); !seen[ip] {
			seen[ip] = true
			addrs = append(addrs, ip)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	out := &adminv1.FirewallResolveHostnameResponse{Addresses: make([]string, 0, len(addrs))}
	for _, ip := range addrs {
		out.Addresses = append(out.Addresses, ip.String())
	}
	return out, nil
}

// FirewallRotateCA replaces the firewall CA (the one the proxy's
// inspection leaves chain to) and names the running agents that still
// trust only the old one: they must be recreated.
func (s *adminService) FirewallRotateCA(ctx context.Context, _ *adminv1.FirewallRotateCARequest) (*adminv1.FirewallRotateCAResponse, error) {
	r, err := s.firewall.RotateCA(ctx)
	switch {
	case err != nil:
		err = s.firewallUnanswered(err)
	case r.Err != nil:
		err = firewallStatus(r.Err)
	}
	if err != nil {
		s.logMutation("rotate_ca", err)
		return nil, err
	}
	s.logMutation("rotate_ca", nil, zap.String("fingerprint", r.Fingerprint), zap.String("previous", r.PreviousFingerprint),
		zap.Strings("still_trusting_old", r.StillTrustingOld))
	return &adminv1.FirewallRotateCAResponse{
		Fingerprint: r.Fingerprint, PreviousFingerprint: r.PreviousFingerprint, StillTrustingOld: r.StillTrustingOld,
	}, nil
}

// FirewallDenied lists the recent refusals the siblings reported.
func (s *adminService) FirewallDenied(ctx context.Context, req *adminv1.FirewallDeniedRequest) (*adminv1.FirewallDeniedResponse, error) {
	m := firewall.GetDenied{Agent: req.GetAgent(), Project: req.GetProject()}
	if d := req.GetSince(); d != nil {
		// As bypassDuration: a malformed Duration (seconds and nanos of
		// different signs) would otherwise be read as some other span.
		if err := d.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "since: %v", err)
		}
		if m.Since = d.AsDuration(); m.Since < 0 {
			return nil, status.Error(codes.InvalidArgument, "since: negative; give how far back, e.g. 10m")
		}
	}
	r, err := s.firewall.Denied(ctx, m)
	if err != nil {
		return nil, s.firewallUnanswered(err)
	}
	if r.Err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "firewall denied: %v", r.Err)
	}
	out := &adminv1.FirewallDeniedResponse{Groups: make([]*adminv1.DeniedGroup, 0, len(r.Groups))}
	for _, g := range r.Groups {
		out.Groups = append(out.Groups, &adminv1.DeniedGroup{
			Where: g.Where, Name: g.Name, Proto: g.Proto, Count: uint32(g.Count), Agents: g.Agents,
			First: timestamppb.New(g.First), Last: timestamppb.New(g.Last), Reason: g.Reason, Allow: g.Allow,
			Method: g.Method, Path: g.Path,
		})
	}
	return out, nil
}

// askRules asks the firewall a rule request answered with
// *firewall.RulesResult and returns it, or the status error its Err maps
// to.
func (s *adminService) askRules(ctx context.Context, m firewall.RulesRequest) (*firewall.RulesResult, error) {
	r, err := s.firewall.Rules(ctx, m)
	if err != nil {
		return nil, s.firewallUnanswered(err)
	}
	if r.Err != nil {
		return nil, firewallStatus(r.Err)
	}
	return r, nil
}

// reasonError is a status error with an ErrorInfo carrying reason (none
// when reason is empty).
func reasonError(code codes.Code, reason, msg string) error {
	st := status.New(code, msg)
	if reason == "" {
		return st.Err()
	}
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
		st = d
	}
	return st.Err()
}

// ruleInvalid is the RULE_INVALID status for err: one line per bad field.
func ruleInvalid(err error) error {
	fes := fieldErrors(err)
	lines := make([]string, 0, len(fes))
	for _, fe := range fes {
		lines = append(lines, fe.Error())
	}
	if len(lines) == 0 {
		lines = append(lines, err.Error())
	}
	return reasonError(codes.InvalidArgument, ReasonRuleInvalid, strings.Join(lines, "\n"))
}

// fieldErrors collects every *egressrules.FieldError in err's tree, in
// order (Validate joins one per bad field).
func fieldErrors(err error) []*egressrules.FieldError {
	var out []*egressrules.FieldError
	var walk func(error)
	walk = func(err error) {
		if fe, ok := err.(*egressrules.FieldError); ok {
			out = append(out, fe)
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			if e := u.Unwrap(); e != nil {
				walk(e)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

// convertRules turns the request's rules into canonical ones, or answers
// RULE_INVALID naming every bad field of every rule at once.
func convertRules(in []*adminv1.EgressRule) ([]egressrules.Rule, error) {
	if len(in) == 0 {
		return nil, reasonError(codes.InvalidArgument, ReasonRuleInvalid, "rules: required: give at least one rule")
	}
	rules := make([]egressrules.Rule, len(in))
	var portErrs []error
	badPort := map[int]bool{}
	for i, r := range in {
		port, err := egressrules.ParsePortRange(r.GetPort())
		if err != nil {
			fe := *err.(*egressrules.FieldError)
			fe.Index = i
			portErrs = append(portErrs, &fe)
			badPort[i] = true
		}
		rules[i] = egressrules.Rule{Dst: r.GetDst(), Proto: egressrules.Proto(r.GetProto()), Port: port, Action: egressrules.Action(r.GetAction()),
			PathRules: pathRules(r.GetPathRules()), PathDefault: egressrules.Action(r.GetPathDefault()), Projects: r.GetProjects()}
	}
	canon, err := egressrules.Validate(rules)
	if err == nil && len(portErrs) == 0 {
		for i := range canon {
			// Omitted stays omitted: the store then keeps the stored
			// rule's path_default when it merges path rules into it.
			if rules[i].PathDefault == "" {
				canon[i].PathDefault = ""
			}
		}
		return canon, nil
	}
	// A port that did not parse reached Validate as "the default": drop
	// what Validate says about it, the parse error says it better.
	var errs []error
	for _, fe := range fieldErrors(err) {
		if !(fe.Field == "port" && badPort[fe.Index]) {
			errs = append(errs, fe)
		}
	}
	errs = append(errs, portErrs...)
	// By rule, then in the order the fields are written.
	rank := func(field string) int {
		switch {
		case strings.HasPrefix(field, "path_rules"):
			return 4
		case field == "path_default":
			return 5
		case strings.HasPrefix(field, "projects"):
			return 6
		}
		return map[string]int{"dst": 0, "proto": 1, "port": 2, "action": 3}[field]
	}
	slices.SortStableFunc(errs, func(a, b error) int {
		x, y := a.(*egressrules.FieldError), b.(*egressrules.FieldError)
		return cmp.Or(cmp.Compare(x.Index, y.Index), cmp.Compare(rank(x.Field), rank(y.Field)))
	})
	return nil, ruleInvalid(errors.Join(errs...))
}

func pathRules(in []*adminv1.PathRule) []egressrules.PathRule {
	if len(in) == 0 {
		return nil
	}
	out := make([]egressrules.PathRule, len(in))
	for i, pr := range in {
		out[i] = egressrules.PathRule{Path: pr.GetPath(), Action: egressrules.Action(pr.GetAction()), Methods: pr.GetMethods()}
	}
	return out
}

// removeRequest checks a FirewallRemoveRuleRequest: all, or a rule, or
// one path rule of a rule.
func removeRequest(req *adminv1.FirewallRemoveRuleRequest) (*firewall.RemoveRule, error) {
	hasRule := req.GetDst() != "" || req.GetProto() != "" || req.GetPort() != ""
	switch {
	case req.GetAll() && req.GetPath() != "":
		return &firewall.RemoveRule{All: true}, reasonError(codes.InvalidArgument, ReasonRuleInvalid,
			"path: set either all or a rule's dst with the path to remove, not both")
	case req.GetAll() && hasRule:
		return &firewall.RemoveRule{All: true}, reasonError(codes.InvalidArgument, ReasonRuleInvalid,
			"all: set either all or a rule's dst (with its proto and port), not both")
	case req.GetAll():
		return &firewall.RemoveRule{All: true}, nil
	}
	port, err := egressrules.ParsePortRange(req.GetPort())
	if err != nil {
		return &firewall.RemoveRule{}, ruleInvalid(err)
	}
	r, err := egressrules.Rule{Dst: req.GetDst(), Proto: egressrules.Proto(req.GetProto()), Port: port, Projects: req.GetProjects()}.Canonical()
	if err != nil {
		return &firewall.RemoveRule{Rule: r}, ruleInvalid(err)
	}
	return &firewall.RemoveRule{Rule: r, Path: req.GetPath()}, nil
}

func egressRule(e egressrules.Entry) *adminv1.EgressRule {
	out := &adminv1.EgressRule{Dst: e.Dst, Proto: string(e.Proto), Port: e.Port.String(), Action: string(e.Action), Id: e.ID,
		PathDefault: string(e.PathDefault), Projects: e.Projects}
	for _, pr := range e.PathRules {
		out.PathRules = append(out.PathRules, &adminv1.PathRule{Path: pr.Path, Action: string(pr.Action), Methods: pr.Methods})
	}
	return out
}

func ruleStatus(st egressrules.Status) adminv1.RuleStatus {
	switch st {
	case egressrules.Added:
		return adminv1.RuleStatus_RULE_STATUS_ADDED
	case egressrules.Modified:
		return adminv1.RuleStatus_RULE_STATUS_MODIFIED
	case egressrules.Unchanged:
		return adminv1.RuleStatus_RULE_STATUS_UNCHANGED
	case egressrules.Removed:
		return adminv1.RuleStatus_RULE_STATUS_REMOVED
	case egressrules.NotFound:
		return adminv1.RuleStatus_RULE_STATUS_NOT_FOUND
	case egressrules.PathRemoved:
		return adminv1.RuleStatus_RULE_STATUS_PATH_REMOVED
	}
	return adminv1.RuleStatus_RULE_STATUS_UNSPECIFIED
}

func stackMembers(in []firewall.StackMember) []*adminv1.StackMember {
	out := make([]*adminv1.StackMember, 0, len(in))
	for _, m := range in {
		out = append(out, &adminv1.StackMember{Name: m.Name, Address: m.Address, ContainerId: m.ContainerID, Healthy: m.Healthy, Error: m.Error})
	}
	return out
}
