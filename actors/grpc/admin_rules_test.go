package grpc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap/zapcore"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clawker/clawker-cp/actors/firewall"
	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// startRules runs the grpc actor against the real firewall actor (firewall
// off, so no stack) keeping its rules in dir.
func startRules(t *testing.T, dir string) *fixture {
	t.Helper()
	f := &fixture{fw: &fakeFirewall{}}
	return f.serve(t, func(sys *actor.ActorSystem) *actor.PID {
		tree := supervise.NewTree()
		in := supervise.Intensity{Max: 3, Window: time.Minute}
		pid := sys.Root.Spawn(tree.SpecProps(firewall.Spec(firewall.Config{Tree: tree, Intensity: in, RulesDir: dir}), in))
		t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
		return pid
	})
}

// wantReason checks err's code and that it carries an ErrorInfo with
// reason in domain clawker.dev.
func wantReason(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("code %s (%v), want %s", st.Code(), err, code)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetReason() != reason || info.GetDomain() != cpgrpc.ErrorDomain {
				t.Errorf("ErrorInfo %s/%s, want %s/%s", info.GetDomain(), info.GetReason(), cpgrpc.ErrorDomain, reason)
			}
			return
		}
	}
	t.Errorf("no ErrorInfo in %v (details %v), want reason %s", err, st.Details(), reason)
}

func ruleKeys(rules []*adminv1.EgressRule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, fmt.Sprintf("%s:%s:%s=%s#%d", r.GetDst(), r.GetProto(), r.GetPort(), r.GetAction(), r.GetId()))
	}
	return out
}

func TestFirewallRules(t *testing.T) {
	dir := t.TempDir()
	f := startRules(t, dir)
	c := f.client

	resp, err := c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "Example.com."},
		{Dst: "10.0.0.0/8", Proto: "tcp", Port: "5432-5433", Action: "deny"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	added := adminv1.RuleStatus_RULE_STATUS_ADDED
	if !reflect.DeepEqual(resp.GetStatuses(), []adminv1.RuleStatus{added, added}) || resp.GetTotal() != 2 {
		t.Errorf("statuses %v, total %d", resp.GetStatuses(), resp.GetTotal())
	}
	// Index-aligned with the request, canonical, with ids.
	r := resp.GetRules()
	if got := ruleKeys(r); len(r) != 2 || !strings.HasPrefix(got[0], "example.com:https:443=allow#") || !strings.HasPrefix(got[1], "10.0.0.0/8:tcp:5432-5433=deny#") ||
		r[0].GetId() == 0 || r[1].GetId() == 0 || r[0].GetId() == r[1].GetId() {
		t.Errorf("rules %v, want the request's, canonical, each with its own id", got)
	}
	if l := f.logLine(t, "firewall_add_rules"); l.Level != zapcore.InfoLevel || l.ContextMap()["rules"] != int64(2) {
		t.Errorf("log line %v %v", l.Level, l.ContextMap())
	}

	resp, err = c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "example.com", Proto: "https", Port: "443"},
		{Dst: "example.com", Action: "deny"},
		{Dst: "git.example.com", Proto: "ssh"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []adminv1.RuleStatus{adminv1.RuleStatus_RULE_STATUS_UNCHANGED, adminv1.RuleStatus_RULE_STATUS_MODIFIED, added}
	if !reflect.DeepEqual(resp.GetStatuses(), want) || resp.GetTotal() != 3 {
		t.Errorf("statuses %v, want %v; total %d", resp.GetStatuses(), want, resp.GetTotal())
	}

	list, err := c.FirewallListRules(callCtx(t), &adminv1.FirewallListRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var dsts []string
	for _, r := range list.GetRules() {
		dsts = append(dsts, r.GetDst()+":"+r.GetProto()+":"+r.GetPort()+"="+r.GetAction())
	}
	if want := []string{"10.0.0.0/8:tcp:5432-5433=deny", "example.com:https:443=deny", "git.example.com:ssh:22=allow"}; !reflect.DeepEqual(dsts, want) {
		t.Errorf("list %v, want %v", dsts, want)
	}

	// Missing: a status, not an error.
	rm, err := c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{Dst: "example.com", Port: "8443"})
	if err != nil {
		t.Fatal(err)
	}
	if rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_NOT_FOUND || rm.GetRemoved() != 0 || rm.GetTotal() != 3 ||
		rm.GetRule().GetDst() != "example.com" || rm.GetRule().GetProto() != "https" || rm.GetRule().GetPort() != "8443" {
		t.Errorf("remove of a missing rule: %v", rm)
	}
	f.logs.TakeAll()
	rm, err = c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{Dst: "EXAMPLE.COM"})
	if err != nil || rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_REMOVED || rm.GetRemoved() != 1 || rm.GetTotal() != 2 {
		t.Errorf("remove: %v, %v", rm, err)
	}
	if l := f.logLine(t, "firewall_remove_rule"); l.ContextMap()["rule"] != "example.com:https:443" || l.ContextMap()["status"] != "REMOVED" {
		t.Errorf("log line %v", l.ContextMap())
	}

	rl, err := c.FirewallReload(callCtx(t), &adminv1.FirewallReloadRequest{})
	if err != nil || rl.GetRules() != 2 {
		t.Errorf("reload: %v, %v", rl, err)
	}
	rm, err = c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{All: true})
	if err != nil || rm.GetStatus() != adminv1.RuleStatus_RULE_STATUS_REMOVED || rm.GetRemoved() != 2 || rm.GetTotal() != 0 || rm.GetRule() != nil {
		t.Errorf("remove all: %v, %v", rm, err)
	}

	// The status counts the rules.
	st, err := c.FirewallStatus(callCtx(t), &adminv1.FirewallStatusRequest{})
	if err != nil || st.GetRules() != 0 || st.GetEnabled() {
		t.Errorf("status %v, %v", st, err)
	}
}

// One bad rule rejects the batch: InvalidArgument, reason RULE_INVALID,
// one line per bad field, and the store file byte for byte as it was.
func TestFirewallAddRulesInvalid(t *testing.T) {
	dir := t.TempDir()
	f := startRules(t, dir)
	c := f.client
	if _, err := c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{{Dst: "example.com"}}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, egressrules.RulesFileName)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f.logs.TakeAll()
	_, err = c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{
		{Dst: "good.example.com"},
		{Dst: "intranet", Proto: "ftp"},
		{Dst: "db.example.com", Proto: "tcp", Port: "99999", Action: "maybe"},
		{Dst: "db.example.com", Proto: "tcp"},
	}})
	wantReason(t, err, codes.InvalidArgument, cpgrpc.ReasonRuleInvalid)
	lines := strings.Split(status.Convert(err).Message(), "\n")
	wantPrefixes := []string{`rules[1]: dst "intranet"`, `rules[1]: proto "ftp"`, `rules[2]: port "99999"`, `rules[2]: action "maybe"`, `rules[3]: port ""`}
	if len(lines) != len(wantPrefixes) {
		t.Fatalf("message lines %q, want %d", lines, len(wantPrefixes))
	}
	for i, p := range wantPrefixes {
		if !strings.HasPrefix(lines[i], p) {
			t.Errorf("line %d %q, want it to start with %q", i, lines[i], p)
		}
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("store file changed:\n%s\nwas\n%s", after, before)
	}
	if l := f.logLine(t, "firewall_add_rules"); l.Level != zapcore.WarnLevel || l.ContextMap()["code"] != "InvalidArgument" {
		t.Errorf("log line %v %v", l.Level, l.ContextMap())
	}

	for _, tc := range []struct {
		name string
		call func(context.Context) error
		want string
	}{
		{"empty batch", func(ctx context.Context) error {
			_, err := c.FirewallAddRules(ctx, &adminv1.FirewallAddRulesRequest{})
			return err
		}, "rules: required"},
		{"remove without dst", func(ctx context.Context) error {
			_, err := c.FirewallRemoveRule(ctx, &adminv1.FirewallRemoveRuleRequest{})
			return err
		}, `dst "": empty`},
		{"remove all and a rule", func(ctx context.Context) error {
			_, err := c.FirewallRemoveRule(ctx, &adminv1.FirewallRemoveRuleRequest{All: true, Dst: "example.com"})
			return err
		}, "all: set either all or a rule's dst"},
		{"remove a bad port", func(ctx context.Context) error {
			_, err := c.FirewallRemoveRule(ctx, &adminv1.FirewallRemoveRuleRequest{Dst: "example.com", Port: "http"})
			return err
		}, `port "http": not a port or range (write 443 or 8000-8100)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(callCtx(t))
			wantReason(t, err, codes.InvalidArgument, cpgrpc.ReasonRuleInvalid)
			wantCode(t, err, codes.InvalidArgument, tc.want)
		})
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a refused removal changed the store")
	}
}

// A store that cannot be read is Internal with reason RULE_STORE, naming
// the file and what is wrong in it.
func TestFirewallRuleStoreBroken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, egressrules.RulesFileName)
	if err := os.WriteFile(path, []byte("rules:\n  - dst: intranet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := startRules(t, dir)
	_, err := f.client.FirewallListRules(callCtx(t), &adminv1.FirewallListRulesRequest{})
	wantReason(t, err, codes.Internal, cpgrpc.ReasonRuleStore)
	wantCode(t, err, codes.Internal, path, `dst "intranet"`)
	_, err = f.client.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{{Dst: "example.com"}}})
	wantReason(t, err, codes.Internal, cpgrpc.ReasonRuleStore)
}

// After the drain closed the queue, rule mutations are Unavailable with
// reason QUEUE_CLOSED; the list still answers.
func TestFirewallRulesAfterQueueClose(t *testing.T) {
	f := startRules(t, t.TempDir())
	res, err := f.sys.Root.RequestFuture(f.fwPID, &supervise.DrainStep{Step: cpapi.StepFirewallQueueClose}, 5*time.Second).Result()
	if d, ok := res.(*supervise.StepDone); err != nil || !ok || d.Outcome != supervise.OutcomeDone {
		t.Fatalf("queue close: %#v, %v", res, err)
	}
	c := f.client
	_, err = c.FirewallAddRules(callCtx(t), &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{{Dst: "example.com"}}})
	wantReason(t, err, codes.Unavailable, cpgrpc.ReasonQueueClosed)
	_, err = c.FirewallRemoveRule(callCtx(t), &adminv1.FirewallRemoveRuleRequest{All: true})
	wantReason(t, err, codes.Unavailable, cpgrpc.ReasonQueueClosed)
	_, err = c.FirewallReload(callCtx(t), &adminv1.FirewallReloadRequest{})
	wantReason(t, err, codes.Unavailable, cpgrpc.ReasonQueueClosed)
	if _, err := c.FirewallListRules(callCtx(t), &adminv1.FirewallListRulesRequest{}); err != nil {
		t.Errorf("list after the queue closed: %v", err)
	}
}

// The stack verbs go through the firewall's mailbox; an unhealthy stack
// is Unavailable with reason STACK_UNHEALTHY, and the status carries the
// members, the network and the rule count.
func TestFirewallStackVerbs(t *testing.T) {
	f := start(t, true)
	c := f.client
	stack := []firewall.StackMember{
		{Name: "DNS", Address: "10.99.7.201:53", ContainerID: cid, Healthy: true},
		{Name: "proxy", Address: "10.99.7.200:15001", Error: "connection refused"},
	}
	f.fw.reset(func(msg interface{}) interface{} {
		if _, ok := msg.(*firewall.GetStatus); ok {
			return &firewall.Status{Enabled: true, Stack: stack, Network: "clawker-net", Subnet: "10.99.7.0/24", Rules: 4}
		}
		return &firewall.Result{}
	})
	init, err := c.FirewallInit(callCtx(t), &adminv1.FirewallInitRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(init.GetStack()) != 2 || init.GetStack()[0].GetName() != "DNS" || !init.GetStack()[0].GetHealthy() ||
		init.GetStack()[1].GetError() != "connection refused" {
		t.Errorf("init stack %v", init.GetStack())
	}
	if _, err := c.FirewallRemove(callCtx(t), &adminv1.FirewallRemoveRequest{Force: true}); err != nil {
		t.Fatal(err)
	}
	f.wantReceived(t, &firewall.StackUp{}, &firewall.GetStatus{}, &firewall.StackDown{Force: true})
	if l := f.logLine(t, "firewall_remove"); l.ContextMap()["force"] != true {
		t.Errorf("log line %v", l.ContextMap())
	}

	st, err := c.FirewallStatus(callCtx(t), &adminv1.FirewallStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	s := st.GetStack()
	if st.GetNetwork() != "clawker-net" || st.GetSubnet() != "10.99.7.0/24" || st.GetRules() != 4 || len(s) != 2 ||
		s[0].GetAddress() != "10.99.7.201:53" || s[0].GetContainerId() != cid || s[1].GetHealthy() {
		t.Errorf("status %v", st)
	}

	f.fw.reset(func(interface{}) interface{} {
		return &firewall.Result{Err: fmt.Errorf("%w: proxy at 10.99.7.200:15001: connection refused", firewall.ErrStackUnhealthy)}
	})
	_, err = c.FirewallInit(callCtx(t), &adminv1.FirewallInitRequest{})
	wantReason(t, err, codes.Unavailable, cpgrpc.ReasonStackUnhealthy)
	wantCode(t, err, codes.Unavailable, "connection refused")
	f.fw.reset(func(interface{}) interface{} { return &firewall.Result{Err: firewall.ErrQueueClosed} })
	_, err = c.FirewallRemove(callCtx(t), &adminv1.FirewallRemoveRequest{})
	wantReason(t, err, codes.Unavailable, cpgrpc.ReasonQueueClosed)
	// The existing mutations carry the reason too.
	_, err = c.FirewallEnable(callCtx(t), &adminv1.FirewallEnableRequest{ContainerId: cid})
	wantReason(t, err, codes.Unavailable, cpgrpc.ReasonQueueClosed)
}

func TestFirewallResolveHostname(t *testing.T) {
	f := start(t, true)
	f.fw.reset(nil) // a stalled mailbox: the lookup must not need it
	c := f.client

	resp, err := c.FirewallResolveHostname(callCtx(t), &adminv1.FirewallResolveHostnameRequest{Hostname: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range resp.GetAddresses() {
		found = found || a == "127.0.0.1"
	}
	if !found {
		t.Errorf("localhost resolved to %v, want 127.0.0.1 among them", resp.GetAddresses())
	}
	resp, err = c.FirewallResolveHostname(callCtx(t), &adminv1.FirewallResolveHostnameRequest{Hostname: "10.1.2.3"})
	if err != nil || !reflect.DeepEqual(resp.GetAddresses(), []string{"10.1.2.3"}) {
		t.Errorf("an address resolved to %v, %v", resp.GetAddresses(), err)
	}

	restore := cpgrpc.SetLookup(func(ctx context.Context, _, host string) ([]netip.Addr, error) {
		switch host {
		case "multi.example.com":
			return []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.2"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}, nil
		case "slow.example.com":
			<-ctx.Done()
			return nil, &net.DNSError{Err: "i/o timeout", Name: host, IsTimeout: true}
		case "broken.example.com":
			return nil, errors.New("connection refused")
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	})
	t.Cleanup(restore)
	resp, err = c.FirewallResolveHostname(callCtx(t), &adminv1.FirewallResolveHostnameRequest{Hostname: "multi.example.com."})
	if want := []string{"10.0.0.1", "10.0.0.2", "2001:db8::1"}; err != nil || !reflect.DeepEqual(resp.GetAddresses(), want) {
		t.Errorf("multi resolved to %v, %v; want %v", resp.GetAddresses(), err, want)
	}
	_, err = c.FirewallResolveHostname(callCtx(t), &adminv1.FirewallResolveHostnameRequest{Hostname: "nxdomain.example.com"})
	wantCode(t, err, codes.NotFound, "nxdomain.example.com does not resolve from the control plane")
	_, err = c.FirewallResolveHostname(callCtx(t), &adminv1.FirewallResolveHostnameRequest{Hostname: "broken.example.com"})
	wantCode(t, err, codes.Unavailable, "connection refused")
	_, err = c.FirewallResolveHostname(callCtx(t), &adminv1.FirewallResolveHostnameRequest{Hostname: ""})
	wantCode(t, err, codes.InvalidArgument, "hostname: required")
	_, err = c.FirewallResolveHostname(callCtx(t), &adminv1.FirewallResolveHostnameRequest{Hostname: "http://example.com/"})
	wantCode(t, err, codes.InvalidArgument, "is not a hostname")

	// The 5 s bound holds, within the CLI's own call timeout.
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.FirewallResolveHostname(ctx, &adminv1.FirewallResolveHostnameRequest{Hostname: "slow.example.com"})
	wantCode(t, err, codes.DeadlineExceeded, "within 5s")
	if d := time.Since(t0); d < 5*time.Second || d > 8*time.Second {
		t.Errorf("slow lookup answered after %s, want about 5s", d)
	}
	if n := len(f.fw.received()); n != 0 {
		t.Errorf("the lookup asked the firewall %d times", n)
	}
}
