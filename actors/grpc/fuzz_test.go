package grpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/naming"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// The handlers fuzzed here run with no actor behind them (zero clients:
// every ask fails with request.ErrNoActor), so what they answer is their
// validation's verdict: InvalidArgument (or PermissionDenied for an
// agent) when they refuse the request, and the "nobody to ask" error of
// the actor they would have asked when they accept it.

// adminMethod is one AdminService RPC: a fresh request to unmarshal into,
// and the handler to call with it.
type adminMethod struct {
	name string
	req  func() proto.Message
	call func(*adminService, context.Context, proto.Message) error
	// fields are what an InvalidArgument of this method may start with.
	fields []string
	// valid is an independent statement of what the method accepts; nil
	// when it accepts every request.
	valid func(proto.Message) bool
}

func adminCall[Req proto.Message, Resp any](h func(*adminService, context.Context, Req) (Resp, error)) func(*adminService, context.Context, proto.Message) error {
	return func(s *adminService, ctx context.Context, m proto.Message) error {
		_, err := h(s, ctx, m.(Req))
		return err
	}
}

func fullContainerID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for _, c := range id {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

func validBypass(d *durationpb.Duration) bool {
	if d == nil {
		return true
	}
	if d.CheckValid() != nil {
		return false
	}
	v := d.AsDuration()
	return v == 0 || (v >= minBypass && v <= egress.MaxBypass)
}

func validRoutes(routes []*adminv1.Route) bool {
	if len(routes) > egress.MaxRoutes {
		return false
	}
	type key struct {
		id    uint32
		port  uint32
		proto adminv1.Protocol
	}
	seen := map[key]bool{}
	for _, r := range routes {
		if r.GetPort() < 1 || r.GetPort() > 65535 || r.GetListenerPort() < 1 || r.GetListenerPort() > 65535 {
			return false
		}
		if p := r.GetProto(); p != adminv1.Protocol_PROTOCOL_TCP && p != adminv1.Protocol_PROTOCOL_UDP {
			return false
		}
		k := key{r.GetIdentity(), r.GetPort(), r.GetProto()}
		if seen[k] {
			return false
		}
		seen[k] = true
	}
	return true
}

// validRule is the rule as egressrules sees it: the port parses and the
// rule, with its path rules and projects, canonicalises.
func validRule(r *adminv1.EgressRule) bool {
	pr, err := egressrules.ParsePortRange(r.GetPort())
	if err != nil {
		return false
	}
	rule := egressrules.Rule{Dst: r.GetDst(), Proto: egressrules.Proto(r.GetProto()), Port: pr,
		Action: egressrules.Action(r.GetAction()), PathDefault: egressrules.Action(r.GetPathDefault()), Projects: r.GetProjects()}
	for _, p := range r.GetPathRules() {
		rule.PathRules = append(rule.PathRules, egressrules.PathRule{Path: p.GetPath(), Action: egressrules.Action(p.GetAction()), Methods: p.GetMethods()})
	}
	_, err = rule.Canonical()
	return err == nil
}

var ruleFields = []string{"dst ", "proto ", "port ", "action ", "path_rules[", "path_default ", "projects[", "projects "}

var adminMethods = []adminMethod{
	{name: "FirewallEnable", req: func() proto.Message { return &adminv1.FirewallEnableRequest{} },
		call: adminCall((*adminService).FirewallEnable), fields: []string{"container_id: "},
		valid: func(m proto.Message) bool {
			return fullContainerID(m.(*adminv1.FirewallEnableRequest).GetContainerId())
		}},
	{name: "FirewallDisable", req: func() proto.Message { return &adminv1.FirewallDisableRequest{} },
		call: adminCall((*adminService).FirewallDisable), fields: []string{"container_id: "},
		valid: func(m proto.Message) bool {
			return fullContainerID(m.(*adminv1.FirewallDisableRequest).GetContainerId())
		}},
	{name: "FirewallBypass", req: func() proto.Message { return &adminv1.FirewallBypassRequest{} },
		call: adminCall((*adminService).FirewallBypass), fields: []string{"container_id: ", "timeout: "},
		valid: func(m proto.Message) bool {
			r := m.(*adminv1.FirewallBypassRequest)
			return fullContainerID(r.GetContainerId()) && validBypass(r.GetTimeout())
		}},
	{name: "FirewallSyncRoutes", req: func() proto.Message { return &adminv1.FirewallSyncRoutesRequest{} },
		call: adminCall((*adminService).FirewallSyncRoutes), fields: []string{"routes: ", "routes["},
		valid: func(m proto.Message) bool { return validRoutes(m.(*adminv1.FirewallSyncRoutesRequest).GetRoutes()) }},
	{name: "FirewallAddRules", req: func() proto.Message { return &adminv1.FirewallAddRulesRequest{} },
		call: adminCall((*adminService).FirewallAddRules), fields: []string{"rules: ", "rules["},
		valid: func(m proto.Message) bool {
			rules := m.(*adminv1.FirewallAddRulesRequest).GetRules()
			for _, r := range rules {
				if !validRule(r) {
					return false
				}
			}
			return len(rules) > 0
		}},
	{name: "FirewallRemoveRule", req: func() proto.Message { return &adminv1.FirewallRemoveRuleRequest{} },
		call: adminCall((*adminService).FirewallRemoveRule), fields: append([]string{"all: ", "path: "}, ruleFields...),
		valid: func(m proto.Message) bool {
			r := m.(*adminv1.FirewallRemoveRuleRequest)
			hasRule := r.GetDst() != "" || r.GetProto() != "" || r.GetPort() != ""
			if r.GetAll() {
				return !hasRule && r.GetPath() == ""
			}
			return validRule(&adminv1.EgressRule{Dst: r.GetDst(), Proto: r.GetProto(), Port: r.GetPort(), Projects: r.GetProjects()})
		}},
	{name: "FirewallResolveHostname", req: func() proto.Message { return &adminv1.FirewallResolveHostnameRequest{} },
		call: adminCall((*adminService).FirewallResolveHostname), fields: []string{"hostname: "},
		valid: func(m proto.Message) bool {
			h := strings.TrimSuffix(strings.TrimSpace(m.(*adminv1.FirewallResolveHostnameRequest).GetHostname()), ".")
			if _, err := netip.ParseAddr(h); err == nil {
				return true
			}
			return h != "" && len(h) <= 253 && !strings.ContainsAny(h, " \t/:@")
		}},
	{name: "FirewallDenied", req: func() proto.Message { return &adminv1.FirewallDeniedRequest{} },
		call: adminCall((*adminService).FirewallDenied), fields: []string{"since: "},
		valid: func(m proto.Message) bool {
			d := m.(*adminv1.FirewallDeniedRequest).GetSince()
			return d == nil || d.CheckValid() == nil && d.AsDuration() >= 0
		}},
	{name: "FirewallRemove", req: func() proto.Message { return &adminv1.FirewallRemoveRequest{} },
		call: adminCall((*adminService).FirewallRemove)},
	{name: "FirewallStatus", req: func() proto.Message { return &adminv1.FirewallStatusRequest{} },
		call: adminCall((*adminService).FirewallStatus)},
	{name: "FirewallInit", req: func() proto.Message { return &adminv1.FirewallInitRequest{} },
		call: adminCall((*adminService).FirewallInit)},
	{name: "FirewallListRules", req: func() proto.Message { return &adminv1.FirewallListRulesRequest{} },
		call: adminCall((*adminService).FirewallListRules), fields: []string{"project "},
		valid: func(m proto.Message) bool {
			p := m.(*adminv1.FirewallListRulesRequest).GetProject()
			return p == "" || naming.ValidProject(p)
		}},
	{name: "FirewallReload", req: func() proto.Message { return &adminv1.FirewallReloadRequest{} },
		call: adminCall((*adminService).FirewallReload)},
	{name: "ListAgents", req: func() proto.Message { return &adminv1.ListAgentsRequest{} },
		call: adminCall((*adminService).ListAgents), fields: []string{"page_token: "},
		valid: func(m proto.Message) bool {
			// A token is base64url of version 1, the project's length
			// (uvarint), the project and the agent name, neither empty.
			tok := m.(*adminv1.ListAgentsRequest).GetPageToken()
			if tok == "" {
				return true
			}
			b, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil || len(tok) > 8<<10 || len(b) < 2 || b[0] != 1 {
				return false
			}
			n, k := binary.Uvarint(b[1:])
			return k > 0 && n > 0 && n < uint64(len(b)-1-k)
		}},
}

// FuzzAdminRequests unmarshals the fuzz bytes into the request of the
// AdminService method the first byte picks, as the gRPC server would, and
// calls its handler. Properties:
//   - no panic;
//   - a refusal is InvalidArgument, and every line of its message starts
//     with the name of the request's field at fault (container_id:,
//     timeout:, routes[i].port:, rules[i]: dst "...", hostname:, ...);
//   - a request is refused exactly when an independent reading of the
//     method's rules says it is invalid; an accepted one goes on to ask
//     its actor (here: Unavailable, no actor).
//
// GetSystemTime and FirewallRotateCA (no input) check
// nothing and are left out.
func FuzzAdminRequests(f *testing.F) {
	id := strings.Repeat("ab", 32)
	seed := func(i int, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	seed(0, &adminv1.FirewallEnableRequest{ContainerId: id})
	seed(1, &adminv1.FirewallDisableRequest{ContainerId: "abc"})
	seed(2, &adminv1.FirewallBypassRequest{ContainerId: id, Timeout: durationpb.New(90e9)})
	seed(2, &adminv1.FirewallBypassRequest{ContainerId: id, Timeout: &durationpb.Duration{Seconds: 1, Nanos: -1}})
	seed(3, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{
		{Identity: 1, Port: 5432, Proto: adminv1.Protocol_PROTOCOL_TCP, ListenerPort: 15432},
		{Identity: 1, Port: 5432, Proto: adminv1.Protocol_PROTOCOL_TCP, ListenerPort: 15433},
		{Identity: 2, Port: 70000, Proto: adminv1.Protocol_PROTOCOL_UDP, ListenerPort: 1},
	}})
	seed(4, &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "example.com"}, {Dst: ".example.org", Proto: "http", Port: "8000-8100", Action: "deny"},
		{Dst: "localhost", Proto: "udp", Port: "0-1", Action: "maybe"}, {Dst: "10.0.0.0/8", Proto: "tcp", Port: "x"},
	}})
	seed(5, &adminv1.FirewallRemoveRuleRequest{Dst: "example.com", Proto: "https", Port: "443"})
	seed(5, &adminv1.FirewallRemoveRuleRequest{All: true, Dst: "example.com"})
	seed(6, &adminv1.FirewallResolveHostnameRequest{Hostname: "api.example.com."})
	seed(6, &adminv1.FirewallResolveHostnameRequest{Hostname: "192.0.2.1"})
	seed(7, &adminv1.FirewallDeniedRequest{Agent: "dev", Since: durationpb.New(-1)})
	seed(7, &adminv1.FirewallDeniedRequest{Project: "proj", Since: durationpb.New(600e9)})
	seed(7, &adminv1.FirewallDeniedRequest{Since: &durationpb.Duration{Seconds: 1, Nanos: -1}})
	for i := 8; i < len(adminMethods); i++ {
		seed(i, adminMethods[i].req())
	}
	listAgents := len(adminMethods) - 1
	seed(listAgents, &adminv1.ListAgentsRequest{PageSize: 9000, PageToken: "AQFwYQ"})
	seed(listAgents, &adminv1.ListAgentsRequest{PageToken: "AQVwYQ"})

	// FirewallResolveHostname looks a name up: never on the network here.
	restore := SetLookup(func(_ context.Context, _, host string) ([]netip.Addr, error) {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	})
	f.Cleanup(restore)
	s := &adminService{peers: peers{log: zap.NewNop()}}

	f.Fuzz(func(t *testing.T, sel uint8, data []byte) {
		m := adminMethods[int(sel)%len(adminMethods)]
		req := m.req()
		if err := proto.Unmarshal(data, req); err != nil {
			return // the server answers an undecodable request itself
		}
		err := m.call(s, context.Background(), req)
		st, ok := status.FromError(err)
		if err == nil || !ok {
			// Only FirewallResolveHostname of an IP literal succeeds
			// without an actor.
			if err == nil && m.name == "FirewallResolveHostname" {
				return
			}
			t.Fatalf("%s(%v) = %v, not a status error", m.name, req, err)
		}
		refused := st.Code() == codes.InvalidArgument
		if m.valid != nil && refused == m.valid(req) {
			t.Fatalf("%s(%v): refused=%v (%v) but the method's rules say valid=%v", m.name, req, refused, err, m.valid(req))
		}
		if m.valid == nil && refused {
			t.Fatalf("%s(%v) refused a request with nothing to check: %v", m.name, req, err)
		}
		if !refused {
			return
		}
		for _, line := range strings.Split(st.Message(), "\n") {
			if !startsWithField(line, m.fields) {
				t.Fatalf("%s: refusal line %q names none of the fields %q", m.name, line, m.fields)
			}
		}
	})
}

// startsWithField reports whether line begins with one of fields, or with
// "rules[i]: " and then one of the rule's fields.
func startsWithField(line string, fields []string) bool {
	for _, f := range fields {
		if !strings.HasPrefix(line, f) {
			continue
		}
		if f != "rules[" {
			return true
		}
		rest := strings.TrimPrefix(line, f)
		i := strings.Index(rest, "]: ")
		if i < 0 {
			return false
		}
		if _, err := strconv.Atoi(rest[:i]); err != nil {
			return false
		}
		return startsWithField(rest[i+3:], ruleFields)
	}
	return false
}

// sessionStream is one Session as the handler sees it: the caller's
// context (its peer) and the messages it sends.
type sessionStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*agentv1.AgentMessage
}

func (s *sessionStream) Context() context.Context { return s.ctx }

func (s *sessionStream) Recv() (*agentv1.AgentMessage, error) {
	if len(s.msgs) == 0 {
		return nil, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

func (s *sessionStream) Send(*agentv1.ControlMessage) error { return nil }
func (s *sessionStream) SetHeader(metadata.MD) error        { return nil }
func (s *sessionStream) SendHeader(metadata.MD) error       { return nil }
func (s *sessionStream) SetTrailer(metadata.MD)             {}

// agentPeer is the context of a call whose verified client certificate has
// common name cn and the given URI SANs (as strings; one that does not
// parse as a URL is left out, as x509 would have refused it).
func agentPeer(cn string, uris ...string) context.Context {
	leaf := &x509.Certificate{Raw: []byte(cn + strings.Join(uris, "\x00")), Subject: pkix.Name{CommonName: cn}}
	for _, u := range uris {
		if p, err := url.Parse(u); err == nil {
			leaf.URIs = append(leaf.URIs, p)
		}
	}
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}},
	})
}

// FuzzAgentRequests sends an AgentService request (Register, or the first
// message of a Session) decoded from the fuzz bytes, from a caller whose
// certificate carries a fuzzed common name and URI SANs. Properties:
//   - no panic;
//   - the request passes (and reaches the registry: Unavailable here)
//     exactly when the certificate's identity parses and the request
//     names that identity's project and agent (a Session: its first
//     message is a Hello that does);
//   - a refusal is PermissionDenied for the identity (saying what the
//     certificate or the request names) or InvalidArgument naming hello.
func FuzzAgentRequests(f *testing.F) {
	id := strings.Repeat("0f", 32)
	good := []string{certs.AgentURNPrefix + "proj.dev", certs.ContainerURNPrefix + id}
	seed := func(sel uint8, cn, agentURN, containerURN string, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(sel, cn, agentURN, containerURN, b)
	}
	seed(0, certs.AgentCommonName, good[0], good[1], &agentv1.RegisterRequest{Project: "proj", AgentName: "dev"})
	seed(0, certs.AgentCommonName, good[0], good[1], &agentv1.RegisterRequest{Project: "proj", AgentName: "other"})
	seed(0, certs.AgentCommonName, certs.AgentURNPrefix+"my.site.dev", good[1], &agentv1.RegisterRequest{Project: "my.site", AgentName: "dev"})
	seed(0, "clawker-cli", good[0], good[1], &agentv1.RegisterRequest{Project: "proj", AgentName: "dev"})
	seed(0, certs.AgentCommonName, certs.AgentURNPrefix+"nodot", certs.ContainerURNPrefix+"abc", &agentv1.RegisterRequest{})
	seed(1, certs.AgentCommonName, good[0], good[1], &agentv1.AgentMessage{Msg: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{Project: "proj", AgentName: "dev"}}})
	seed(1, certs.AgentCommonName, good[0], good[1], &agentv1.AgentMessage{Msg: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}})
	seed(1, certs.AgentCommonName, good[0], good[1], &agentv1.AgentMessage{Msg: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{Project: "PROJ", AgentName: "dev"}}})

	sys := actortest.System(f)
	// Session reports its state to the overseer: a sink here.
	overseer := sys.Root.Spawn(actor.PropsFromFunc(func(actor.Context) {}))
	s := &agentService{peers: peers{sys: sys, overseer: overseer, log: zap.NewNop()}}

	f.Fuzz(func(t *testing.T, sel uint8, cn, agentURN, containerURN string, data []byte) {
		ctx := agentPeer(cn, agentURN, containerURN)
		p, _ := peer.FromContext(ctx)
		cert := p.AuthInfo.(credentials.TLSInfo).State.VerifiedChains[0][0]
		want, idErr := certs.ParseAgentIdentity(cert)

		var (
			err              error
			project, agent   string
			named, wantHello bool
		)
		switch sel % 2 {
		case 0:
			req := &agentv1.RegisterRequest{}
			if proto.Unmarshal(data, req) != nil {
				return
			}
			project, agent, named = req.GetProject(), req.GetAgentName(), true
			_, err = s.Register(ctx, req)
		case 1:
			msg := &agentv1.AgentMessage{}
			if proto.Unmarshal(data, msg) != nil {
				return
			}
			wantHello = true
			if h := msg.GetHello(); h != nil {
				project, agent, named = h.GetProject(), h.GetAgentName(), true
			}
			err = s.Session(&sessionStream{ctx: ctx, msgs: []*agentv1.AgentMessage{msg}})
		}
		st, ok := status.FromError(err)
		if err == nil || !ok {
			t.Fatalf("answer %v is not a status error", err)
		}
		pass := idErr == nil && named && project == want.Project && agent == want.Agent
		switch st.Code() {
		case codes.Unavailable:
			if !pass {
				t.Fatalf("passed on to the registry: cert %q %q %q (identity %+v, %v), request names %q.%q", cn, agentURN, containerURN, want, idErr, project, agent)
			}
		case codes.PermissionDenied:
			if pass {
				t.Fatalf("refused a request matching its certificate %+v: %v", want, err)
			}
			msg := st.Message()
			if !strings.HasPrefix(msg, "certificate") && !strings.HasPrefix(msg, "request names") && !strings.HasPrefix(msg, "hello names") {
				t.Fatalf("refusal %q says neither what the certificate nor what the request names", msg)
			}
		case codes.InvalidArgument:
			if !wantHello || idErr != nil || named || !strings.HasPrefix(st.Message(), "hello: ") {
				t.Fatalf("InvalidArgument %q (identity %v, hello %v)", st.Message(), idErr, named)
			}
		default:
			t.Fatalf("unexpected answer %v", err)
		}
	})
}
