package main_test

// End-to-end tests of agent identity: clients built here speak the real
// AgentService and AdminService protocols, over mTLS with certificates
// minted the way `clawker` mints them, to a real clawker-cp process.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/yaml.v3"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/oauth"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// callTimeout bounds one unary call of a test client.
const callTimeout = 15 * time.Second

// fastSessions makes heartbeats and last_seen flushes frequent enough to
// watch last_seen move within a test.
const fastSessions = "control_plane:\n  sessions:\n    heartbeat: 200ms\n    last_seen_flush: 200ms\n"

// sessionsPath is the PID id of the parent of every Session actor.
const sessionsPath = "clawker-cp/grpc/sessions"

// identityCP is a running control plane with its home and the host-side
// auth material (the CA key mints agent certificates).
type identityCP struct {
	home *cptest.Home
	m    *certs.Material
	p    *cptest.Process
	// agentToken puts a clawker-agent token from the CP's Hydra for a
	// container (and the assertion it came from) on every call, as
	// clawkerd sends one on its first Register: with Ory, a new binding
	// needs it.
	agentToken func(containerID string) grpc.DialOption
}

// noDrainToZero keeps the watcher from draining the CP for want of agent
// containers (these tests run none; a long run or a slow machine would
// otherwise outlive the default grace).
// A fresh map each call: MergeYAML merges into it in place.
func noDrainToZero() map[string]any {
	return map[string]any{"control_plane": map[string]any{"watcher": map[string]any{"grace": "24h"}}}
}

// identityHome is NewCPHome with drain-to-zero out of reach, merged with
// extraSettings.
func identityHome(t testing.TB, extraSettings string) *cptest.Home {
	t.Helper()
	doc, err := cptest.MergeYAML(noDrainToZero(), extraSettings)
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return cptest.NewCPHome(t, string(out))
}

// startIdentityCP starts a CP in a fresh home and waits until it is healthy.
func startIdentityCP(t testing.TB, extraSettings string) *identityCP {
	t.Helper()
	home := identityHome(t, extraSettings)
	c := &identityCP{home: home, m: home.EnsureAuth(t)}
	c.agentToken = func(containerID string) grpc.DialOption { return cptest.AgentTokenCreds(t, home, c.m, containerID) }
	// With the Ory stack: the AdminService validates tokens with Hydra,
	// and a new agent binding needs a clawker-agent token.
	c.p = cptest.StartCP(t, home, cpBinary(t), "CLAWKER_CP_ORY_DIR="+cptest.OryDir(t))
	c.p.WaitHealthy(t, healthyTimeout)
	return c
}

func (c *identityCP) agentAddr(t testing.TB) string { return cptest.Loopback(c.home.Ports(t).Agent()) }
func (c *identityCP) adminAddr(t testing.TB) string { return cptest.Loopback(c.home.Ports(t).Admin()) }

// admin is an AdminService client with the CLI certificate and a bearer
// token from the CP's Hydra, as the CLI dials it.
func (c *identityCP) admin(t testing.TB) adminv1.AdminServiceClient {
	t.Helper()
	s, err := settings.Load(c.home.SettingsFile(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cl, err := adminclient.Dial(ctx, c.home.Paths(t), s, adminclient.WithOAuth())
	if err != nil {
		t.Fatalf("adminclient.Dial: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// listAgents calls ListAgents with the CLI certificate.
func (c *identityCP) listAgents(t testing.TB, admin adminv1.AdminServiceClient) []*adminv1.Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if err != nil {
		t.Fatalf("ListAgents: %v\nstderr tail:\n%s", err, c.p.Tail(cptest.TailLines))
	}
	return resp.GetAgents()
}

// testAgent is one simulated clawkerd: its identity, its minted leaf and a
// client on its own connection.
type testAgent struct {
	id     certs.AgentIdentity
	leaf   *x509.Certificate
	tls    *tls.Config
	conn   *cptest.Conn
	client agentv1.AgentServiceClient
}

// newAgent mints a certificate for project.name in a new container and
// makes a client for it (clawkerd's own TLS config, built from the PEMs)
// that carries a clawker-agent token (agentToken).
func (c *identityCP) newAgent(t testing.TB, project, name string) *testAgent {
	t.Helper()
	id := certs.AgentIdentity{Project: project, Agent: name, ContainerID: cptest.RandomContainerID(t)}
	cfg, leaf := cptest.AgentTLSConfig(t, c.m, id)
	conn := cptest.DialGRPC(t, c.agentAddr(t), cfg, c.agentToken(id.ContainerID))
	return &testAgent{id: id, leaf: leaf, tls: cfg, conn: conn, client: agentv1.NewAgentServiceClient(conn)}
}

func (a *testAgent) name() string { return a.id.Project + "." + a.id.Agent }

// thumbprint is the hex SHA-256 of the leaf's public key (its
// SubjectPublicKeyInfo), computed here rather than with
// certs.KeyThumbprint so the test checks the CP's definition.
func thumbprint(leaf *x509.Certificate) string {
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

func (a *testAgent) thumbprint() string { return thumbprint(a.leaf) }
func (a *testAgent) key() string        { return agentdb.Key(a.thumbprint(), a.id.ContainerID) }

func (a *testAgent) tryRegister() (*agentv1.RegisterResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return a.client.Register(ctx, &agentv1.RegisterRequest{Project: a.id.Project, AgentName: a.id.Agent})
}

func (a *testAgent) register(t testing.TB) *agentv1.RegisterResponse {
	t.Helper()
	resp, err := a.tryRegister()
	if err != nil {
		t.Fatalf("Register %s: %v", a.name(), err)
	}
	return resp
}

// agentSession is one open Session: a goroutine counts the CP's heartbeats
// and another sends the agent's own at a fixed interval.
type agentSession struct {
	stream     agentv1.AgentService_SessionClient
	cancel     context.CancelFunc
	heartbeats atomic.Int64 // CP heartbeats received, the first included
	recvDone   chan struct{}
	sendDone   chan struct{}
	recvErr    error // why the receive loop ended; read after recvDone
	sendErr    error // why the send loop ended; read after sendDone
}

// openSession opens a Session with hello, waits (at most helloWait) for
// the CP's first message, which must be a Heartbeat, then sends a
// Heartbeat every `every` until closed. It is safe to call from any
// goroutine: it reports problems as errors.
func openSession(client agentv1.AgentServiceClient, hello *agentv1.Hello, every, helloWait time.Duration) (*agentSession, error) {
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.Session(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening the Session: %w", err)
	}
	if err := stream.Send(&agentv1.AgentMessage{Msg: &agentv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		cancel()
		return nil, fmt.Errorf("sending Hello: %w", err)
	}
	timer := time.AfterFunc(helloWait, cancel)
	first, err := stream.Recv()
	if !timer.Stop() {
		return nil, fmt.Errorf("no first message within %s (%v)", helloWait, err)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	if first.GetHeartbeat() == nil {
		cancel()
		return nil, fmt.Errorf("the first ControlMessage is %T, want a Heartbeat", first.GetMsg())
	}
	s := &agentSession{stream: stream, cancel: cancel, recvDone: make(chan struct{}), sendDone: make(chan struct{})}
	s.heartbeats.Add(1)
	go func() {
		defer close(s.recvDone)
		for {
			m, err := stream.Recv()
			if err != nil {
				s.recvErr = err
				return
			}
			if m.GetHeartbeat() != nil {
				s.heartbeats.Add(1)
			}
		}
	}()
	go func() {
		defer close(s.sendDone)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.recvDone:
				return
			case <-tick.C:
				hb := &agentv1.AgentMessage{Msg: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{SentAt: timestamppb.Now()}}}
				if err := stream.Send(hb); err != nil {
					s.sendErr = err
					return
				}
			}
		}
	}()
	return s, nil
}

// alive reports whether the Session's stream is still open.
func (s *agentSession) alive() bool {
	select {
	case <-s.recvDone:
		return false
	default:
		return true
	}
}

// close ends the Session from the agent's side and waits for its loops.
func (s *agentSession) close() {
	s.cancel()
	<-s.recvDone
	<-s.sendDone
}

// sessionChildren lists the names of grpc/sessions' children.
func sessionChildren(t testing.TB, p *cptest.Process) []string {
	t.Helper()
	node, ok := cptest.FindActor(p.Actors(t), sessionsPath)
	if !ok {
		t.Fatalf("/debug/actors has no %s\nstderr tail:\n%s", sessionsPath, p.Tail(cptest.TailLines))
	}
	names := make([]string, 0, len(node.Children))
	for _, c := range node.Children {
		names = append(names, c.Name)
	}
	return names
}

func byKey(agents []*adminv1.Agent) map[string]*adminv1.Agent {
	out := make(map[string]*adminv1.Agent, len(agents))
	for _, a := range agents {
		out[a.GetKey()] = a
	}
	return out
}

// checkListed asserts ListAgents reports a's binding as registered by resp.
func checkListed(t *testing.T, got *adminv1.Agent, a *testAgent, resp *agentv1.RegisterResponse) {
	t.Helper()
	if got == nil {
		t.Errorf("ListAgents does not list %s (key %s)", a.name(), a.key())
		return
	}
	if got.GetProject() != a.id.Project || got.GetAgentName() != a.id.Agent || got.GetContainerId() != a.id.ContainerID || got.GetThumbprint() != a.thumbprint() {
		t.Errorf("ListAgents lists %s as project %q agent %q container %q thumbprint %q; want %q %q %q %q",
			a.name(), got.GetProject(), got.GetAgentName(), got.GetContainerId(), got.GetThumbprint(),
			a.id.Project, a.id.Agent, a.id.ContainerID, a.thumbprint())
	}
	if !got.GetRegisteredAt().AsTime().Equal(resp.GetRegisteredAt().AsTime()) {
		t.Errorf("%s: ListAgents registered_at %v, Register answered %v", a.name(), got.GetRegisteredAt().AsTime(), resp.GetRegisteredAt().AsTime())
	}
}

// TestRegisterAndListAgents: two agents register; ListAgents (CLI
// certificate) lists both bindings exactly; registering again is
// idempotent; a Session shows up as connected, as a child of grpc/sessions,
// and its heartbeats keep last_seen moving; closing it undoes both.
func TestRegisterAndListAgents(t *testing.T) {
	t.Parallel()
	cp := startIdentityCP(t, fastSessions)
	admin := cp.admin(t)

	if got := cp.listAgents(t, admin); len(got) != 0 {
		t.Fatalf("a fresh registry lists %d agents: %v", len(got), got)
	}

	one := cp.newAgent(t, "proj.one", "alpha") // dots are allowed in a project
	two := cp.newAgent(t, "proj-two", "beta")
	before := time.Now()
	r1, r2 := one.register(t), two.register(t)
	after := time.Now()
	resps := map[*testAgent]*agentv1.RegisterResponse{one: r1, two: r2}
	for a, r := range resps {
		if r.GetAgentKey() != a.key() {
			t.Errorf("%s: Register answered key %s, want agentdb.Key(thumbprint, container id) = %s", a.name(), r.GetAgentKey(), a.key())
		}
		if at := r.GetRegisteredAt().AsTime(); at.Before(before) || at.After(after) {
			t.Errorf("%s: registered_at %v is outside the call [%v, %v]", a.name(), at, before, after)
		}
	}
	if one.key() == two.key() {
		t.Fatal("two agents got the same key")
	}

	list := cp.listAgents(t, admin)
	if len(list) != 2 {
		t.Fatalf("ListAgents lists %d agents, want 2: %v", len(list), list)
	}
	// Ordered by (project, agent_name): "proj-two" sorts before "proj.one".
	if list[0].GetProject() != "proj-two" || list[1].GetProject() != "proj.one" {
		t.Errorf("ListAgents order %q, %q; want proj-two then proj.one", list[0].GetProject(), list[1].GetProject())
	}
	listed := byKey(list)
	for a, r := range resps {
		got := listed[a.key()]
		checkListed(t, got, a, r)
		if got != nil && got.GetConnected() {
			t.Errorf("%s is connected before any Session", a.name())
		}
	}

	// Idempotent: the same certificate again, on the same connection and on
	// a brand-new one.
	fresh := &testAgent{id: one.id, leaf: one.leaf, tls: one.tls}
	fresh.conn = cptest.DialGRPC(t, cp.agentAddr(t), one.tls)
	fresh.client = agentv1.NewAgentServiceClient(fresh.conn)
	for i, again := range []*agentv1.RegisterResponse{one.register(t), fresh.register(t)} {
		if again.GetAgentKey() != r1.GetAgentKey() || !again.GetRegisteredAt().AsTime().Equal(r1.GetRegisteredAt().AsTime()) {
			t.Errorf("re-register #%d: key %s registered_at %v; first time %s %v",
				i+1, again.GetAgentKey(), again.GetRegisteredAt().AsTime(), r1.GetAgentKey(), r1.GetRegisteredAt().AsTime())
		}
	}
	// The CP's stderr reaches the test through a pipe: poll for the lines.
	var created, repeated int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		created, repeated = 0, 0
		for _, l := range cp.p.Events("agent_registered") {
			if l["container_id"] != one.id.ContainerID {
				continue
			}
			if l["created"] == true {
				created++
			} else {
				repeated++
			}
		}
		if created == 1 && repeated == 2 {
			break
		}
	}
	if created != 1 || repeated != 2 {
		t.Errorf("agent_registered lines for %s: %d created, %d repeated; want 1 and 2", one.name(), created, repeated)
	}
	list = cp.listAgents(t, admin)
	if len(list) != 2 {
		t.Fatalf("after re-registering, ListAgents lists %d agents, want 2", len(list))
	}
	checkListed(t, byKey(list)[one.key()], one, r1)

	// A Session for one agent only.
	sess, err := openSession(one.client, &agentv1.Hello{Project: one.id.Project, AgentName: one.id.Agent}, 50*time.Millisecond, callTimeout)
	if err != nil {
		t.Fatalf("Session for %s: %v\nstderr tail:\n%s", one.name(), err, cp.p.Tail(cptest.TailLines))
	}
	defer sess.close()
	cp.p.WaitFor(t, changeTimeout, "ListAgents to show only "+one.name()+" connected", func() (bool, string) {
		var conn []string
		for _, a := range cp.listAgents(t, admin) {
			if a.GetConnected() {
				conn = append(conn, a.GetProject()+"."+a.GetAgentName())
			}
		}
		return slices.Equal(conn, []string{one.name()}), fmt.Sprintf("connected: %q", conn)
	})
	if kids := sessionChildren(t, cp.p); !slices.Equal(kids, []string{one.name()}) {
		t.Errorf("%s has children %q, want exactly [%s]", sessionsPath, kids, one.name())
	}
	if n, ok := cptest.FindActor(cp.p.Actors(t), sessionsPath+"/"+one.name()); !ok || n.State != cpapi.ActorRunning {
		t.Errorf("session actor %s/%s: %+v (found %v), want running", sessionsPath, one.name(), n, ok)
	}

	// Heartbeats keep last_seen moving; the idle agent's stays put.
	lastSeen := func() (moving, idle time.Time) {
		l := byKey(cp.listAgents(t, admin))
		return l[one.key()].GetLastSeen().AsTime(), l[two.key()].GetLastSeen().AsTime()
	}
	prev, idle0 := lastSeen()
	for i := range 3 {
		cp.p.WaitFor(t, changeTimeout, fmt.Sprintf("last_seen of %s to move (#%d)", one.name(), i+1), func() (bool, string) {
			cur, _ := lastSeen()
			if cur.After(prev) {
				prev = cur
				return true, ""
			}
			return false, fmt.Sprintf("last_seen %v", cur)
		})
	}
	if !prev.After(r1.GetRegisteredAt().AsTime()) {
		t.Errorf("last_seen %v did not pass registered_at %v", prev, r1.GetRegisteredAt().AsTime())
	}
	if _, idle := lastSeen(); !idle.Equal(idle0) || !idle.Equal(r2.GetRegisteredAt().AsTime()) {
		t.Errorf("last_seen of the idle %s moved: %v -> %v (registered_at %v)", two.name(), idle0, idle, r2.GetRegisteredAt().AsTime())
	}
	if n := sess.heartbeats.Load(); n < 3 {
		t.Errorf("the agent received %d CP heartbeats, want several at a 200ms interval", n)
	}
	if !sess.alive() {
		t.Fatalf("the Session ended: %v", sess.recvErr)
	}

	// Closing the Session: not connected any more, and its actor is gone.
	sess.close()
	cp.p.WaitFor(t, changeTimeout, "ListAgents to show nobody connected and grpc/sessions to be empty", func() (bool, string) {
		var conn []string
		for _, a := range cp.listAgents(t, admin) {
			if a.GetConnected() {
				conn = append(conn, a.GetProject()+"."+a.GetAgentName())
			}
		}
		kids := sessionChildren(t, cp.p)
		return len(conn) == 0 && len(kids) == 0, fmt.Sprintf("connected %q, session actors %q", conn, kids)
	})
	if len(cp.listAgents(t, admin)) != 2 {
		t.Error("closing a Session changed the registry")
	}
}

// refusalCase is one way to be turned away.
type refusalCase struct {
	name string
	// try makes the attempt and returns its error and the connection used
	// (whose local addresses identify the CP's log line).
	try        func(t *testing.T, cp *identityCP) (*cptest.Conn, error)
	code       codes.Code
	event      string
	reason     string
	agentLabel string // the "agent" field of the log line, "" to skip
}

// TestRefusals: every identity the CP must refuse is refused with the
// documented gRPC code and one JSON log line naming the reason, and none
// of them leaves a trace in the registry.
func TestRefusals(t *testing.T) {
	t.Parallel()
	cp := startIdentityCP(t, "")

	// A second, unrelated CA, as another clawker installation would have.
	otherDir := filepath.Join(t.TempDir(), "auth")
	if _, err := certs.Ensure(otherDir, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	other, err := certs.Load(otherDir)
	if err != nil {
		t.Fatal(err)
	}

	register := func(conn *cptest.Conn, project, agent string) error {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		_, err := agentv1.NewAgentServiceClient(conn).Register(ctx, &agentv1.RegisterRequest{Project: project, AgentName: agent})
		return err
	}
	// session opens a Session, says hello and returns what the first
	// Recv returned.
	session := func(conn *cptest.Conn, project, agent string) error {
		s, err := openSession(agentv1.NewAgentServiceClient(conn), &agentv1.Hello{Project: project, AgentName: agent}, time.Second, callTimeout)
		if err == nil {
			s.close()
			return errors.New("the Session was accepted")
		}
		return err
	}
	agentURN := func(project, agent string) *url.URL {
		u, err := url.Parse(certs.AgentURNPrefix + project + "." + agent)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	containerURN := func(id string) *url.URL {
		u, err := url.Parse(certs.ContainerURNPrefix + id)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	// The binding the replay case leaves behind: the only row the
	// registry may hold at the end.
	var bound struct {
		sync.Mutex
		key string
	}

	cases := []refusalCase{
		{
			name: "certificate from another CA",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				id := certs.AgentIdentity{Project: "p", Agent: "foreign", ContainerID: cptest.RandomContainerID(t)}
				// Issued by the other CA; the client still trusts the real
				// CP, so only the CP can object.
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cptest.ClientTLS(cp.m, cptest.AgentCert(t, other, id)))
				return conn, register(conn, id.Project, id.Agent)
			},
			code: codes.Unavailable, event: "register_failed", reason: "tls_handshake",
		},
		{
			name: "expired certificate",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				cid := cptest.RandomContainerID(t)
				cert := cptest.SignLeaf(t, cp.m, &x509.Certificate{
					Subject:   pkix.Name{CommonName: certs.AgentCommonName},
					NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour),
					URIs: []*url.URL{agentURN("p", "expired"), containerURN(cid)},
				})
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cptest.ClientTLS(cp.m, cert))
				return conn, register(conn, "p", "expired")
			},
			code: codes.Unavailable, event: "register_failed", reason: "tls_handshake",
		},
		{
			name: "CLI certificate on the agent port",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cptest.ClientTLS(cp.m, cptest.CLICert(cp.m)))
				return conn, register(conn, "p", "cli")
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "wrong_cn",
		},
		{
			name: "request names another agent",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				a := cp.newAgent(t, "p", "mine")
				return a.conn, register(a.conn, "p", "theirs")
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "agent_san_mismatch", agentLabel: "p.mine",
		},
		{
			name: "request names another project",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				a := cp.newAgent(t, "p", "wanderer")
				return a.conn, register(a.conn, "q", "wanderer")
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "agent_san_mismatch", agentLabel: "p.wanderer",
		},
		{
			name: "no container SAN",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				cert := cptest.SignLeaf(t, cp.m, &x509.Certificate{
					Subject: pkix.Name{CommonName: certs.AgentCommonName},
					URIs:    []*url.URL{agentURN("p", "nocontainer")},
				})
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cptest.ClientTLS(cp.m, cert))
				return conn, register(conn, "p", "nocontainer")
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "missing_container_san",
		},
		{
			name: "no agent SAN",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				cert := cptest.SignLeaf(t, cp.m, &x509.Certificate{
					Subject: pkix.Name{CommonName: certs.AgentCommonName},
					URIs:    []*url.URL{containerURN(cptest.RandomContainerID(t))},
				})
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cptest.ClientTLS(cp.m, cert))
				return conn, register(conn, "p", "noagent")
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "missing_agent_san",
		},
		{
			name: "second certificate for a bound container",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				first := cp.newAgent(t, "p", "replayed")
				r := first.register(t)
				bound.Lock()
				bound.key = r.GetAgentKey()
				bound.Unlock()
				// Same container, same name, a new key pair: a replay of
				// the container id by someone who obtained another cert
				// (and an agent token: the registry refuses it).
				cfg, _ := cptest.AgentTLSConfig(t, cp.m, first.id)
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cfg, cp.agentToken(first.id.ContainerID))
				return conn, register(conn, first.id.Project, first.id.Agent)
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "container_bound", agentLabel: "p.replayed",
		},
		{
			name: "new binding without an agent token",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				id := certs.AgentIdentity{Project: "p", Agent: "tokenless", ContainerID: cptest.RandomContainerID(t)}
				cfg, _ := cptest.AgentTLSConfig(t, cp.m, id)
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cfg)
				return conn, register(conn, id.Project, id.Agent)
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "agent_token_missing", agentLabel: "p.tokenless",
		},
		{
			name: "new binding with the CLI's admin token",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				s, err := settings.Load(cp.home.SettingsFile(t))
				if err != nil {
					t.Fatal(err)
				}
				admin, err := adminclient.NewTokenSource(cp.m, s)
				if err != nil {
					t.Fatal(err)
				}
				id := certs.AgentIdentity{Project: "p", Agent: "admin-token", ContainerID: cptest.RandomContainerID(t)}
				cfg, _ := cptest.AgentTLSConfig(t, cp.m, id)
				conn := cptest.DialGRPC(t, cp.agentAddr(t), cfg, grpc.WithPerRPCCredentials(&oauth.PerRPCCredentials{Source: admin}))
				return conn, register(conn, id.Project, id.Agent)
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "agent_token_invalid", agentLabel: "p.admin-token",
		},
		{
			name: "Session without Register",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				a := cp.newAgent(t, "p", "unregistered")
				return a.conn, session(a.conn, a.id.Project, a.id.Agent)
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "not_registered", agentLabel: "p.unregistered",
		},
		{
			name: "Session hello names another agent",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				a := cp.newAgent(t, "p", "hello")
				return a.conn, session(a.conn, a.id.Project, "someone-else")
			},
			code: codes.PermissionDenied, event: "register_failed", reason: "agent_san_mismatch", agentLabel: "p.hello",
		},
		{
			name: "agent certificate on the admin port",
			try: func(t *testing.T, cp *identityCP) (*cptest.Conn, error) {
				id := certs.AgentIdentity{Project: "p", Agent: "admin", ContainerID: cptest.RandomContainerID(t)}
				cfg, _ := cptest.AgentTLSConfig(t, cp.m, id)
				conn := cptest.DialGRPC(t, cp.adminAddr(t), cfg)
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				defer cancel()
				_, err := adminv1.NewAdminServiceClient(conn).ListAgents(ctx, &adminv1.ListAgentsRequest{})
				return conn, err
			},
			code: codes.Unavailable, event: "admin_refused", reason: "tls_handshake",
		},
	}

	t.Run("cases", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				conn, err := tc.try(t, cp)
				if got := status.Code(err); got != tc.code {
					t.Errorf("code %v (%v), want %v", got, err, tc.code)
				}
				line := cp.p.WaitForLine(t, changeTimeout, func(l map[string]any) bool {
					peer, _ := l["peer"].(string)
					return l["event"] == tc.event && conn.HasLocal(peer)
				})
				if line["reason"] != tc.reason {
					t.Errorf("%s line has reason %v, want %q: %v", tc.event, line["reason"], tc.reason, line)
				}
				if tc.agentLabel != "" && line["agent"] != tc.agentLabel {
					t.Errorf("%s line names agent %v, want %q: %v", tc.event, line["agent"], tc.agentLabel, line)
				}
				if line["level"] != "warn" {
					t.Errorf("%s line at level %v, want warn", tc.event, line["level"])
				}
			})
		}
	})

	// Nothing refused was written: the registry holds the replay case's
	// first registration and nothing else, and nobody is connected.
	list := cp.listAgents(t, cp.admin(t))
	if len(list) != 1 || list[0].GetKey() != bound.key || list[0].GetConnected() {
		t.Errorf("after the refusals ListAgents lists %v; want only the replayed container's first binding %s", list, bound.key)
	}
	if kids := sessionChildren(t, cp.p); len(kids) != 0 {
		t.Errorf("refused Sessions left session actors: %q", kids)
	}
	if p := cp.p.Events("register_failed"); slices.ContainsFunc(p, func(l map[string]any) bool { return l["reason"] == "internal" }) {
		t.Errorf("a refusal was logged as an internal failure: %v", p)
	}
}

// TestRegistrySurvivesRestart: a binding outlives the CP: after SIGTERM
// (exit 0) a new CP on the same home lists it unchanged, and the agent's
// re-registration is idempotent.
func TestRegistrySurvivesRestart(t *testing.T) {
	t.Parallel()
	cp := startIdentityCP(t, "")
	a := cp.newAgent(t, "restart", "survivor")
	r := a.register(t)

	if err := cp.p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := cp.p.MustExit(t, exitTimeout); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	checkDrainSucceeded(t, checkDrain(t, cp.p))

	second := cptest.StartCP(t, cp.home, cpBinary(t), "CLAWKER_CP_ORY_DIR="+cptest.OryDir(t))
	second.WaitHealthy(t, healthyTimeout)
	cp.p = second
	list := cp.listAgents(t, cp.admin(t))
	if len(list) != 1 {
		t.Fatalf("after a restart ListAgents lists %d agents, want 1: %v", len(list), list)
	}
	checkListed(t, list[0], a, r)
	if list[0].GetKey() != r.GetAgentKey() || list[0].GetConnected() {
		t.Errorf("after a restart: key %s connected %v; want %s, not connected", list[0].GetKey(), list[0].GetConnected(), r.GetAgentKey())
	}

	// The agent reconnects (a new connection to the new process) with the
	// same certificate.
	again := &testAgent{id: a.id, leaf: a.leaf, tls: a.tls, conn: cptest.DialGRPC(t, cp.agentAddr(t), a.tls)}
	again.client = agentv1.NewAgentServiceClient(again.conn)
	r2 := again.register(t)
	if r2.GetAgentKey() != r.GetAgentKey() || !r2.GetRegisteredAt().AsTime().Equal(r.GetRegisteredAt().AsTime()) {
		t.Errorf("re-register after the restart: key %s registered_at %v; before %s %v",
			r2.GetAgentKey(), r2.GetRegisteredAt().AsTime(), r.GetAgentKey(), r.GetRegisteredAt().AsTime())
	}
	if l := second.WaitForEvent(t, changeTimeout, "agent_registered"); l["created"] != false {
		t.Errorf("the re-registration after the restart created a binding: %v", l)
	}
}

// TestSIGKILLDuringRegisterBurst: 8 clients register distinct agents as
// fast as they can, each on its own connection with its own certificate;
// the CP is SIGKILLed after about 150 acknowledgements. The registry file
// must pass sqlite's integrity check and hold every acknowledged binding.
func TestSIGKILLDuringRegisterBurst(t *testing.T) {
	t.Parallel()
	const (
		workers = 8
		killAt  = 150
		pool    = 250 // pre-minted certificates (and tokens): far more than will be used
	)
	cp := startIdentityCP(t, "")

	type minted struct {
		id   certs.AgentIdentity
		tls  *tls.Config
		leaf *x509.Certificate
	}
	certsPool := make([]minted, pool)
	for i := range certsPool {
		id := certs.AgentIdentity{Project: "burst", Agent: fmt.Sprintf("agent-%04d", i), ContainerID: cptest.RandomContainerID(t)}
		cfg, leaf := cptest.AgentTLSConfig(t, cp.m, id)
		certsPool[i] = minted{id, cfg, leaf}
	}
	conns := make([]*cptest.Conn, pool)
	for i, mc := range certsPool {
		// Each its own container's token, fetched now: the burst is of
		// Registers, not of token exchanges.
		tok := cptest.AgentTokenCredsFetched(t, cp.home, cp.m, mc.id.ContainerID)
		conns[i] = cptest.DialGRPC(t, cp.agentAddr(t), mc.tls, tok) // lazy: connects on first call
	}

	type ack struct {
		i   int
		key string
		at  time.Time
	}
	var (
		mu      sync.Mutex
		acked   []ack
		failed  []string
		next    atomic.Int64
		stop    atomic.Bool
		reached = make(chan struct{})
		once    sync.Once
	)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				i := int(next.Add(1)) - 1
				if i >= pool {
					return
				}
				mc := certsPool[i]
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				resp, err := agentv1.NewAgentServiceClient(conns[i]).Register(ctx, &agentv1.RegisterRequest{Project: mc.id.Project, AgentName: mc.id.Agent})
				cancel()
				_ = conns[i].Close() // one connection per registration
				mu.Lock()
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s: %v", mc.id.Agent, err))
				} else {
					acked = append(acked, ack{i, resp.GetAgentKey(), resp.GetRegisteredAt().AsTime()})
					if len(acked) >= killAt {
						once.Do(func() { close(reached) })
					}
				}
				mu.Unlock()
			}
		}()
	}

	select {
	case <-reached:
	case <-time.After(2 * time.Minute):
		stop.Store(true)
		wg.Wait()
		t.Fatalf("only %d registrations acknowledged in 2 minutes; failures: %q\nstderr tail:\n%s", len(acked), failed, cp.p.Tail(cptest.TailLines))
	}
	// No worker starts another registration from here on, so those in
	// flight (at most one per worker) are the only ones the kill can cut.
	stop.Store(true)
	if err := cp.p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, err := cp.p.Wait(exitTimeout); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the CP did not die of SIGKILL: %v", err)
	}
	attempted := min(int(next.Load()), pool)
	t.Logf("SIGKILL after %d acknowledged registrations; %d attempted, %d failed (in flight at the kill)", len(acked), attempted, len(failed))
	if len(failed) > workers {
		// Before the kill nothing fails; after it a worker can only fail
		// the one registration it had in flight.
		t.Errorf("%d registrations failed, want at most %d (those in flight at the kill): %q", len(failed), workers, failed)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := agentdb.Open(ctx, cp.home.Paths(t).RegistryDB)
	if err != nil {
		t.Fatalf("opening the registry after SIGKILL: %v", err)
	}
	defer db.Close()
	if err := db.IntegrityCheck(ctx); err != nil {
		t.Fatalf("integrity check after SIGKILL: %v", err)
	}
	for _, a := range acked {
		mc := certsPool[a.i]
		want := agentdb.Key(thumbprint(mc.leaf), mc.id.ContainerID)
		if a.key != want {
			t.Errorf("%s was acknowledged with key %s, want %s", mc.id.Agent, a.key, want)
		}
		got, err := db.Get(ctx, a.key)
		if err != nil {
			t.Errorf("acknowledged %s (key %s) is not in the registry after SIGKILL: %v", mc.id.Agent, a.key, err)
			continue
		}
		if got.Project != mc.id.Project || got.AgentName != mc.id.Agent || got.ContainerID != mc.id.ContainerID ||
			got.Thumbprint != thumbprint(mc.leaf) || !got.RegisteredAt.Equal(a.at) {
			t.Errorf("acknowledged %s stored as %+v", mc.id.Agent, got)
		}
	}
	all, err := db.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Unacknowledged registrations in flight may or may not have
	// committed; nothing else may be there.
	if len(all) < len(acked) || len(all) > attempted {
		t.Errorf("the registry holds %d rows; %d were acknowledged and %d attempted", len(all), len(acked), attempted)
	}
	names := make([]string, 0, len(all))
	for _, a := range all {
		names = append(names, a.AgentName)
	}
	sort.Strings(names)
	for _, n := range names {
		var i int
		if _, err := fmt.Sscanf(n, "agent-%04d", &i); err != nil || i >= attempted {
			t.Errorf("the registry holds %q, which was never attempted", n)
		}
	}
}

// waitClosed reports whether the stream's receive loop ended within d, and
// with what.
func waitClosed(s *agentSession, d time.Duration) (bool, error) {
	select {
	case <-s.recvDone:
		if errors.Is(s.recvErr, io.EOF) {
			return true, nil
		}
		return true, s.recvErr
	case <-time.After(d):
		return false, nil
	}
}

// connectedNames lists the agents ListAgents reports connected.
func (c *identityCP) connectedNames(t testing.TB, admin adminv1.AdminServiceClient) []string {
	t.Helper()
	var out []string
	for _, a := range c.listAgents(t, admin) {
		if a.GetConnected() {
			out = append(out, a.GetProject()+"."+a.GetAgentName())
		}
	}
	return out
}

// An agent that reconnects while its old Session is still open gets a new
// Session under the same name: connected in ListAgents, reachable, ended by
// the drain, and a third reconnect works too.
func TestSessionReplacedOnReconnect(t *testing.T) {
	t.Parallel()
	cp := startIdentityCP(t, "control_plane:\n  sessions:\n    heartbeat: 1s\n    last_seen_flush: 1s\n")
	admin := cp.admin(t)
	a := cp.newAgent(t, "proj", "phoenix")
	a.register(t)
	hello := &agentv1.Hello{Project: a.id.Project, AgentName: a.id.Agent}

	var prev *agentSession
	for round := 1; round <= 3; round++ {
		conn := cptest.DialGRPC(t, cp.agentAddr(t), a.tls) // a new connection each time
		s, err := openSession(agentv1.NewAgentServiceClient(conn), hello, 100*time.Millisecond, callTimeout)
		if err != nil {
			t.Fatalf("Session #%d: %v\nstderr tail:\n%s", round, err, cp.p.Tail(cptest.TailLines))
		}
		defer s.close()
		if prev != nil {
			if closed, _ := waitClosed(prev, changeTimeout); !closed {
				t.Fatalf("Session #%d did not end when #%d replaced it", round-1, round)
			}
		}
		cp.p.WaitFor(t, changeTimeout, fmt.Sprintf("Session #%d to be the one connected Session", round), func() (bool, string) {
			conn := cp.connectedNames(t, admin)
			kids := sessionChildren(t, cp.p)
			ok := slices.Equal(conn, []string{a.name()}) && slices.Equal(kids, []string{a.name()}) && s.alive()
			return ok, fmt.Sprintf("ListAgents connected %q, session actors %q, stream alive %v", conn, kids, s.alive())
		})
		prev = s
	}
	if n := len(cp.p.Events("session_replaced")); n != 2 {
		t.Errorf("%d session_replaced lines, want 2", n)
	}

	prev.close()
	cp.p.WaitFor(t, changeTimeout, "nobody connected after the last Session closed", func() (bool, string) {
		conn, kids := cp.connectedNames(t, admin), sessionChildren(t, cp.p)
		return len(conn) == 0 && len(kids) == 0, fmt.Sprintf("connected %q, session actors %q", conn, kids)
	})
}

// TestSilentAgentIsDisconnected: an agent that stops sending (its stream
// still open) loses its Session after three heartbeat intervals: the
// stream is ended with Unavailable, ListAgents reports it disconnected and
// its session actor is gone.
func TestSilentAgentIsDisconnected(t *testing.T) {
	t.Parallel()
	cp := startIdentityCP(t, fastSessions)
	admin := cp.admin(t)
	a := cp.newAgent(t, "proj", "quiet")
	a.register(t)
	// An interval far beyond the test: the agent never sends a heartbeat.
	s, err := openSession(a.client, &agentv1.Hello{Project: a.id.Project, AgentName: a.id.Agent}, time.Hour, callTimeout)
	if err != nil {
		t.Fatalf("Session: %v", err)
	}
	defer s.close()
	opened := time.Now()
	closed, err := waitClosed(s, changeTimeout)
	if !closed {
		t.Fatalf("a silent agent's Session is still open after %s", changeTimeout)
	}
	// 3 x 200ms of silence counted from the CP's side of the open (a
	// little before openSession returned), noticed on a tick.
	if took := time.Since(opened); took < 400*time.Millisecond || took > 5*time.Second {
		t.Errorf("the silent Session ended after %s, want about 600-800ms", took)
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("the silent Session ended with %v, want Unavailable", err)
	}
	cp.p.WaitFor(t, changeTimeout, "the silent agent to be disconnected", func() (bool, string) {
		conn, kids := cp.connectedNames(t, admin), sessionChildren(t, cp.p)
		return len(conn) == 0 && len(kids) == 0, fmt.Sprintf("connected %q, session actors %q", conn, kids)
	})
	if l := cp.p.WaitForEvent(t, changeTimeout, "session_ended"); l["broken"] != true {
		t.Errorf("session_ended line %v, want broken=true", l)
	}
	// The agent can come back.
	again, err := openSession(agentv1.NewAgentServiceClient(cptest.DialGRPC(t, cp.agentAddr(t), a.tls)),
		&agentv1.Hello{Project: a.id.Project, AgentName: a.id.Agent}, 50*time.Millisecond, callTimeout)
	if err != nil {
		t.Fatalf("reconnecting after the silent Session ended: %v", err)
	}
	defer again.close()
	cp.p.WaitFor(t, changeTimeout, "the agent to be connected again", func() (bool, string) {
		conn := cp.connectedNames(t, admin)
		return slices.Equal(conn, []string{a.name()}), fmt.Sprintf("connected %q", conn)
	})
}

// TestAdminTokensEndToEnd: the AdminService of a CP running its Ory stack
// refuses a call without a bearer token and serves one with a token from
// the CP's Hydra; GetSystemTime stays public. Hydra killed: the token of
// before is refused (Hydra's store is in memory, so it is never valid
// again), the restarted Hydra has its clients back and a fresh token works.
func TestAdminTokensEndToEnd(t *testing.T) {
	t.Parallel()
	cp := startIdentityCP(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	bare := adminv1.NewAdminServiceClient(cptest.DialGRPC(t, cp.adminAddr(t), cptest.ClientTLS(cp.m, cptest.CLICert(cp.m))))
	if _, err := bare.ListAgents(ctx, &adminv1.ListAgentsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListAgents without a token: %v, want Unauthenticated", err)
	}
	if _, err := bare.GetSystemTime(ctx, &adminv1.GetSystemTimeRequest{}); err != nil {
		t.Errorf("GetSystemTime without a token: %v", err)
	}
	withToken := cp.admin(t)
	cp.listAgents(t, withToken)

	started := cp.p.Events("ory_process_started")
	var hydraPID int
	for _, e := range started {
		if e["server"] == "hydra" {
			hydraPID = int(e["pid"].(float64))
		}
	}
	if hydraPID == 0 {
		t.Fatalf("no ory_process_started line for hydra in %v", started)
	}
	if err := syscall.Kill(hydraPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := withToken.ListAgents(ctx, &adminv1.ListAgentsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListAgents with a token of the killed Hydra: %v, want Unauthenticated", err)
	}
	cptest.WaitFor(t, 30*time.Second, "hydra restarted with its clients", func() (bool, string) {
		return len(cp.p.Events("ory_clients_registered")) >= 2, ""
	})
	cp.p.WaitHealthy(t, healthyTimeout)
	cp.listAgents(t, cp.admin(t))
}
