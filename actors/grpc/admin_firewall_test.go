package grpc_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/clawker/clawker-cp/actors/firewall"
	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/egress"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// requestTimeout is the grpc actor's bound on asking the firewall; short,
// so the "no answer" case is quick.
const requestTimeout = 500 * time.Millisecond

var cid = strings.Repeat("a1b2c3d4", 8) // a full container id

// fakeFirewall is a real actor answering the firewall's messages: it
// records each one and answers with whatever answer returns for it (nil:
// no answer at all, as a stalled mailbox).
type fakeFirewall struct {
	mu     sync.Mutex
	got    []interface{}
	answer func(msg interface{}) interface{}
}

func (f *fakeFirewall) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *firewall.Enable, *firewall.Disable, *firewall.Bypass, *firewall.SyncRoutes, *firewall.GetStatus,
		*firewall.StackUp, *firewall.StackDown, *firewall.AddRules, *firewall.RemoveRule, *firewall.ListRules, *firewall.ReloadRules:
		f.mu.Lock()
		f.got = append(f.got, m)
		answer := f.answer
		f.mu.Unlock()
		if answer == nil {
			return
		}
		if a := answer(m); a != nil {
			ctx.Respond(a)
		}
	}
}

// reset forgets what was received and sets the answers.
func (f *fakeFirewall) reset(answer func(msg interface{}) interface{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got, f.answer = nil, answer
}

func (f *fakeFirewall) received() []interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]interface{}(nil), f.got...)
}

// ok answers every mutation with success; a Bypass ends at bypassEnd.
var bypassEnd = time.Date(2026, 5, 12, 9, 42, 18, 0, time.UTC)

func ok(msg interface{}) interface{} {
	switch msg.(type) {
	case *firewall.Bypass:
		return &firewall.Result{Until: bypassEnd}
	case *firewall.GetStatus:
		return &firewall.Status{}
	}
	return &firewall.Result{}
}

type fixture struct {
	fw     *fakeFirewall
	fwPID  *actor.PID
	sys    *actor.ActorSystem
	client *adminclient.Client
	logs   *observer.ObservedLogs
}

// start runs the real grpc actor, with the CP's server bundle and admin
// listener, wired to a fake firewall (none when withFirewall is false),
// and dials it with the CLI's own client over mTLS.
func start(t *testing.T, withFirewall bool) *fixture {
	t.Helper()
	f := &fixture{fw: &fakeFirewall{answer: ok}}
	return f.serve(t, func(sys *actor.ActorSystem) *actor.PID {
		if !withFirewall {
			return nil
		}
		fw := f.fw
		return sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return fw }))
	})
}

// serve runs the grpc actor wired to the firewall spawnFirewall returns
// (nil: none) and dials it.
func (f *fixture) serve(t *testing.T, spawnFirewall func(*actor.ActorSystem) *actor.PID) *fixture {
	t.Helper()
	home := adminclienttest.NewHome(t)
	m := home.EnsureAuth(t)
	paths := home.Paths(t)
	if err := m.WriteServerBundle(paths.CPAuthDir); err != nil {
		t.Fatal(err)
	}
	ports := cptest.FreePorts(t, 2)
	tokens := adminclienttest.ServeTokenEndpoint(t, m)
	home.SetPorts(t, ports[1], tokens.Port)

	sys := newTestSystem(t)
	core, logs := observer.New(zapcore.DebugLevel)
	f.sys, f.logs = sys, logs
	fwPID := spawnFirewall(sys)
	f.fwPID = fwPID
	spawnGRPC(t, sys, cpgrpc.Config{
		BindHost:  "127.0.0.1",
		AgentPort: ports[0], AdminPort: ports[1], AuthDir: paths.CPAuthDir,
		Firewall:  fwPID,
		Heartbeat: time.Second, RequestTimeout: requestTimeout,
		Introspector: tokens,
		Log:          zap.New(core),
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := adminclient.Dial(ctx, paths, home.Settings(t), adminclient.WithOAuth())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	f.client = c
	return f
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), adminclient.CallTimeout)
	t.Cleanup(cancel)
	return ctx
}

// wantCode checks err's code and that its message contains every part.
func wantCode(t *testing.T, err error, code codes.Code, parts ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("code %s (%v), want %s", st.Code(), err, code)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Errorf("message %q does not contain %q", st.Message(), p)
		}
	}
}

// wantReceived checks the fake received exactly want, in order.
func (f *fixture) wantReceived(t *testing.T, want ...interface{}) {
	t.Helper()
	got := f.fw.received()
	if len(want) == 0 && len(got) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("firewall received %s\nwant %s", show(got), show(want))
	}
}

func show(msgs []interface{}) string {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "%T%+v ", m, m)
	}
	return b.String()
}

// logLine returns the one line logged with event (and fails otherwise).
func (f *fixture) logLine(t *testing.T, event string) observer.LoggedEntry {
	t.Helper()
	var lines []observer.LoggedEntry
	for _, l := range f.logs.TakeAll() {
		if l.ContextMap()["event"] == event {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d log lines with event=%s, want 1: %v", len(lines), event, lines)
	}
	return lines[0]
}

func TestFirewallMutations(t *testing.T) {
	f := start(t, true)
	c := f.client

	t.Run("enable", func(t *testing.T) {
		f.fw.reset(ok)
		if _, err := c.FirewallEnable(callCtx(t), &adminv1.FirewallEnableRequest{ContainerId: cid}); err != nil {
			t.Fatal(err)
		}
		f.wantReceived(t, &firewall.Enable{ContainerID: cid})
		l := f.logLine(t, "firewall_enable")
		if l.Level != zapcore.InfoLevel || l.ContextMap()["container_id"] != cid {
			t.Errorf("log line %v %v", l.Level, l.ContextMap())
		}
	})

	t.Run("disable", func(t *testing.T) {
		f.fw.reset(ok)
		if _, err := c.FirewallDisable(callCtx(t), &adminv1.FirewallDisableRequest{ContainerId: cid}); err != nil {
			t.Fatal(err)
		}
		f.wantReceived(t, &firewall.Disable{ContainerID: cid})
		if l := f.logLine(t, "firewall_disable"); l.ContextMap()["container_id"] != cid {
			t.Errorf("log line %v", l.ContextMap())
		}
	})

	t.Run("bypass", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			timeout *durationpb.Duration
			want    time.Duration
		}{
			{"asked", durationpb.New(90 * time.Second), 90 * time.Second},
			{"unset", nil, firewall.DefaultBypass},
			{"zero", durationpb.New(0), firewall.DefaultBypass},
			{"max", durationpb.New(time.Hour), time.Hour},
			{"min", durationpb.New(time.Second), time.Second},
		} {
			f.fw.reset(ok)
			resp, err := c.FirewallBypass(callCtx(t), &adminv1.FirewallBypassRequest{ContainerId: cid, Timeout: tc.timeout})
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			f.wantReceived(t, &firewall.Bypass{ContainerID: cid, Duration: tc.want})
			if !resp.GetUntil().AsTime().Equal(bypassEnd) || resp.GetTimeout().AsDuration() != tc.want {
				t.Errorf("%s: response %v", tc.name, resp)
			}
			l := f.logLine(t, "firewall_bypass")
			if m := l.ContextMap(); m["container_id"] != cid || m["timeout"] != tc.want {
				t.Errorf("%s: log line %v", tc.name, m)
			}
		}
	})

	t.Run("sync_routes", func(t *testing.T) {
		f.fw.reset(ok)
		resp, err := c.FirewallSyncRoutes(callCtx(t), &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{
			{Identity: 7, Port: 443, Proto: adminv1.Protocol_PROTOCOL_TCP, ListenerPort: 10443},
			{Identity: 7, Port: 443, Proto: adminv1.Protocol_PROTOCOL_UDP, ListenerPort: 10444},
			{Identity: 9, Port: 65535, Proto: adminv1.Protocol_PROTOCOL_TCP, ListenerPort: 1},
		}})
		if err != nil {
			t.Fatal(err)
		}
		f.wantReceived(t, &firewall.SyncRoutes{Routes: []egress.Route{
			{Identity: 7, Port: 443, Proto: egress.TCP, ListenerPort: 10443},
			{Identity: 7, Port: 443, Proto: egress.UDP, ListenerPort: 10444},
			{Identity: 9, Port: 65535, Proto: egress.TCP, ListenerPort: 1},
		}})
		if resp.GetRoutes() != 3 {
			t.Errorf("routes = %d, want 3", resp.GetRoutes())
		}
		if l := f.logLine(t, "firewall_sync_routes"); l.ContextMap()["routes"] != int64(3) {
			t.Errorf("log line %v", l.ContextMap())
		}

		// An empty set clears the routes.
		f.fw.reset(ok)
		if _, err := c.FirewallSyncRoutes(callCtx(t), &adminv1.FirewallSyncRoutesRequest{}); err != nil {
			t.Fatal(err)
		}
		f.wantReceived(t, &firewall.SyncRoutes{Routes: []egress.Route{}})
	})
}

// Bad input is refused before the firewall is asked, naming the field.
func TestFirewallInvalidArguments(t *testing.T) {
	f := start(t, true)
	c := f.client
	tcp := adminv1.Protocol_PROTOCOL_TCP
	good := func() *adminv1.Route { return &adminv1.Route{Identity: 1, Port: 80, Proto: tcp, ListenerPort: 8080} }
	for _, tc := range []struct {
		name  string
		call  func(context.Context) error
		event string
		parts []string
	}{
		{"enable empty id", func(ctx context.Context) error {
			_, err := c.FirewallEnable(ctx, &adminv1.FirewallEnableRequest{})
			return err
		}, "firewall_enable", []string{"container_id: required"}},
		{"disable empty id", func(ctx context.Context) error {
			_, err := c.FirewallDisable(ctx, &adminv1.FirewallDisableRequest{})
			return err
		}, "firewall_disable", []string{"container_id: required"}},
		{"bypass empty id", func(ctx context.Context) error {
			_, err := c.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{Timeout: durationpb.New(time.Minute)})
			return err
		}, "firewall_bypass", []string{"container_id: required"}},
		{"short id", func(ctx context.Context) error {
			_, err := c.FirewallEnable(ctx, &adminv1.FirewallEnableRequest{ContainerId: cid[:12]})
			return err
		}, "firewall_enable", []string{"container_id:", "full container id"}},
		{"upper-case id", func(ctx context.Context) error {
			_, err := c.FirewallDisable(ctx, &adminv1.FirewallDisableRequest{ContainerId: strings.ToUpper(cid)})
			return err
		}, "firewall_disable", []string{"container_id:"}},
		{"negative timeout", func(ctx context.Context) error {
			_, err := c.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: cid, Timeout: durationpb.New(-time.Second)})
			return err
		}, "firewall_bypass", []string{"timeout: -1s is out of range", "1s to 1h", "default 30s"}},
		{"timeout over an hour", func(ctx context.Context) error {
			_, err := c.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: cid, Timeout: durationpb.New(time.Hour + time.Second)})
			return err
		}, "firewall_bypass", []string{"timeout: 1h0m1s is out of range", "1s to 1h"}},
		{"sub-second timeout", func(ctx context.Context) error {
			_, err := c.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: cid, Timeout: durationpb.New(500 * time.Millisecond)})
			return err
		}, "firewall_bypass", []string{"timeout: 500ms is out of range"}},
		{"malformed timeout", func(ctx context.Context) error {
			_, err := c.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: cid, Timeout: &durationpb.Duration{Seconds: 1, Nanos: -1}})
			return err
		}, "firewall_bypass", []string{"timeout:"}},
		{"port 0", func(ctx context.Context) error {
			r := good()
			r.Port = 0
			_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{good(), r}})
			return err
		}, "firewall_sync_routes", []string{"routes[1].port: 0 is out of range 1..65535"}},
		{"port too high", func(ctx context.Context) error {
			r := good()
			r.Port = 65536
			_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{r}})
			return err
		}, "firewall_sync_routes", []string{"routes[0].port: 65536 is out of range 1..65535"}},
		{"listener port 0", func(ctx context.Context) error {
			r := good()
			r.ListenerPort = 0
			_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{r}})
			return err
		}, "firewall_sync_routes", []string{"routes[0].listener_port: 0 is out of range 1..65535"}},
		{"listener port too high", func(ctx context.Context) error {
			r := good()
			r.Identity, r.ListenerPort = 2, 70000
			_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{good(), r}})
			return err
		}, "firewall_sync_routes", []string{"routes[1].listener_port: 70000"}},
		{"proto unspecified", func(ctx context.Context) error {
			r := good()
			r.Proto = adminv1.Protocol_PROTOCOL_UNSPECIFIED
			_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{r}})
			return err
		}, "firewall_sync_routes", []string{"routes[0].proto: PROTOCOL_UNSPECIFIED is not PROTOCOL_TCP or PROTOCOL_UDP"}},
		{"proto unknown number", func(ctx context.Context) error {
			r := good()
			r.Proto = adminv1.Protocol(17)
			_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{r}})
			return err
		}, "firewall_sync_routes", []string{"routes[0].proto: 17"}},
		{"duplicate route", func(ctx context.Context) error {
			r := good()
			r.ListenerPort = 9090
			_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{Routes: []*adminv1.Route{good(), r}})
			return err
		}, "firewall_sync_routes", []string{"routes[1]:", "already routed by routes[0]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.fw.reset(ok)
			wantCode(t, tc.call(callCtx(t)), codes.InvalidArgument, tc.parts...)
			f.wantReceived(t)
			l := f.logLine(t, tc.event)
			if l.Level != zapcore.WarnLevel || l.ContextMap()["code"] != "InvalidArgument" {
				t.Errorf("log line %v %v", l.Level, l.ContextMap())
			}
		})
	}
}

// The firewall's typed errors become codes; its message is kept.
func TestFirewallErrorCodes(t *testing.T) {
	f := start(t, true)
	c := f.client
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{firewall.ErrFirewallDisabled, codes.FailedPrecondition},
		{firewall.ErrQueueClosed, codes.Unavailable},
		{fmt.Errorf("%w: %s", firewall.ErrUnknownContainer, cid), codes.NotFound},
		{firewall.ErrBadDuration, codes.InvalidArgument},
		{errors.New("updating cgroup_cfg: operation not permitted"), codes.Internal},
	} {
		fail := func(interface{}) interface{} { return &firewall.Result{Err: tc.err} }
		calls := map[string]func(context.Context) error{
			"enable": func(ctx context.Context) error {
				_, err := c.FirewallEnable(ctx, &adminv1.FirewallEnableRequest{ContainerId: cid})
				return err
			},
			"disable": func(ctx context.Context) error {
				_, err := c.FirewallDisable(ctx, &adminv1.FirewallDisableRequest{ContainerId: cid})
				return err
			},
			"bypass": func(ctx context.Context) error {
				_, err := c.FirewallBypass(ctx, &adminv1.FirewallBypassRequest{ContainerId: cid, Timeout: durationpb.New(time.Minute)})
				return err
			},
			"sync_routes": func(ctx context.Context) error {
				_, err := c.FirewallSyncRoutes(ctx, &adminv1.FirewallSyncRoutesRequest{})
				return err
			},
		}
		for verb, call := range calls {
			t.Run(verb+"/"+tc.code.String(), func(t *testing.T) {
				f.fw.reset(fail)
				wantCode(t, call(callCtx(t)), tc.code, tc.err.Error())
				if n := len(f.fw.received()); n != 1 {
					t.Errorf("firewall asked %d times, want 1", n)
				}
				l := f.logLine(t, "firewall_"+verb)
				if m := l.ContextMap(); l.Level != zapcore.WarnLevel || m["code"] != tc.code.String() || m["error"] != tc.err.Error() {
					t.Errorf("log line %v %v", l.Level, m)
				}
			})
		}
	}
}

func TestFirewallStatus(t *testing.T) {
	f := start(t, true)
	until := time.Date(2026, 5, 12, 10, 0, 0, 0, time.UTC)
	other := strings.Repeat("0f", 32)
	f.fw.reset(func(interface{}) interface{} {
		return &firewall.Status{Enabled: true, Routes: 12, Agents: []firewall.AgentEnforcement{
			{ContainerID: cid, CgroupID: 4242},
			{ContainerID: other, CgroupID: 4243, Disabled: true, BypassUntil: until},
		}}
	})
	resp, err := f.client.FirewallStatus(callCtx(t), &adminv1.FirewallStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	f.wantReceived(t, &firewall.GetStatus{})
	a := resp.GetAgents()
	if !resp.GetEnabled() || resp.GetRouteCount() != 12 || len(a) != 2 ||
		a[0].GetContainerId() != cid || a[0].GetCgroupId() != 4242 || a[0].GetDisabled() || a[0].GetBypassUntil() != nil ||
		a[1].GetContainerId() != other || a[1].GetCgroupId() != 4243 || !a[1].GetDisabled() || !a[1].GetBypassUntil().AsTime().Equal(until) {
		t.Errorf("status %v", resp)
	}
	for _, l := range f.logs.All() {
		if ev, _ := l.ContextMap()["event"].(string); strings.HasPrefix(ev, "firewall_") {
			t.Errorf("a status read logged %v", l.ContextMap())
		}
	}

	// A firewall with the stack off says so; an odd answer is Internal.
	f.fw.reset(func(interface{}) interface{} { return &firewall.Status{} })
	if resp, err := f.client.FirewallStatus(callCtx(t), &adminv1.FirewallStatusRequest{}); err != nil || resp.GetEnabled() || len(resp.GetAgents()) != 0 {
		t.Errorf("disabled status %v, %v", resp, err)
	}
	f.fw.reset(func(interface{}) interface{} { return &firewall.Result{} })
	_, err = f.client.FirewallStatus(callCtx(t), &adminv1.FirewallStatusRequest{})
	wantCode(t, err, codes.Internal, "unexpected answer *firewall.Result")
}

// A firewall that does not answer within the request timeout, or does not
// run at all, is Unavailable.
func TestFirewallUnavailable(t *testing.T) {
	f := start(t, true)
	f.fw.reset(nil) // never answers
	t0 := time.Now()
	_, err := f.client.FirewallEnable(callCtx(t), &adminv1.FirewallEnableRequest{ContainerId: cid})
	wantCode(t, err, codes.Unavailable, "no answer within "+requestTimeout.String())
	if d := time.Since(t0); d < requestTimeout || d > requestTimeout+3*time.Second {
		t.Errorf("answered after %s, want about %s", d, requestTimeout)
	}
	f.wantReceived(t, &firewall.Enable{ContainerID: cid})
	_, err = f.client.FirewallStatus(callCtx(t), &adminv1.FirewallStatusRequest{})
	wantCode(t, err, codes.Unavailable)

	// Stopped: the request goes to dead letters.
	f.fw.reset(ok)
	if err := f.sys.Root.StopFuture(f.fwPID).Wait(); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.FirewallBypass(callCtx(t), &adminv1.FirewallBypassRequest{ContainerId: cid})
	wantCode(t, err, codes.Unavailable)

	// Not wired at all.
	g := start(t, false)
	_, err = g.client.FirewallDisable(callCtx(t), &adminv1.FirewallDisableRequest{ContainerId: cid})
	wantCode(t, err, codes.Unavailable, "no firewall actor")
}
