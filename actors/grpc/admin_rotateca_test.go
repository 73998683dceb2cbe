package grpc_test

import (
	"reflect"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/grpc/codes"

	"github.com/clawker/clawker-cp/actors/firewall"
	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/certs"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// FirewallRotateCA on the real firewall actor: each call replaces the CA
// in the rules directory and answers its fingerprint and the one before.
func TestFirewallRotateCA(t *testing.T) {
	dir := t.TempDir()
	f := startRules(t, dir)
	first, err := f.client.FirewallRotateCA(callCtx(t), &adminv1.FirewallRotateCARequest{})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.LoadFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if first.GetFingerprint() != ca.Fingerprint || first.GetPreviousFingerprint() != "" || len(first.GetStillTrustingOld()) != 0 {
		t.Errorf("first rotate %v; CA on disk %s", first, ca.Fingerprint)
	}
	if m := f.logLine(t, "firewall_rotate_ca").ContextMap(); m["fingerprint"] != first.GetFingerprint() || m["previous"] != "" {
		t.Errorf("log line %v", m)
	}
	second, err := f.client.FirewallRotateCA(callCtx(t), &adminv1.FirewallRotateCARequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ca, err = certs.LoadFirewallCA(dir); err != nil {
		t.Fatal(err)
	}
	if second.GetFingerprint() != ca.Fingerprint || second.GetPreviousFingerprint() != first.GetFingerprint() || second.GetFingerprint() == first.GetFingerprint() {
		t.Errorf("second rotate %v after %v; CA on disk %s", second, first, ca.Fingerprint)
	}
	line := f.logLine(t, "firewall_rotate_ca")
	if m := line.ContextMap(); m["fingerprint"] != second.GetFingerprint() || m["previous"] != first.GetFingerprint() {
		t.Errorf("log line %v", m)
	}
}

// rotateFirewall answers RotateCA with answer (nil: not at all).
type rotateFirewall struct{ answer *firewall.RotateCAResult }

func (r *rotateFirewall) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*firewall.RotateCA); ok && r.answer != nil {
		ctx.Respond(r.answer)
	}
}

// The answer's agents come through as they are; the actor's errors and
// its silence map to codes.
func TestFirewallRotateCAAnswers(t *testing.T) {
	serve := func(t *testing.T, answer *firewall.RotateCAResult) *fixture {
		f := &fixture{fw: &fakeFirewall{}}
		return f.serve(t, func(sys *actor.ActorSystem) *actor.PID {
			return sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &rotateFirewall{answer: answer} }))
		})
	}
	f := serve(t, &firewall.RotateCAResult{Fingerprint: "bb", PreviousFingerprint: "aa", StillTrustingOld: []string{"api/a", "web/b"}})
	res, err := f.client.FirewallRotateCA(callCtx(t), &adminv1.FirewallRotateCARequest{})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetFingerprint() != "bb" || res.GetPreviousFingerprint() != "aa" || !reflect.DeepEqual(res.GetStillTrustingOld(), []string{"api/a", "web/b"}) {
		t.Errorf("answer %v", res)
	}

	f = serve(t, &firewall.RotateCAResult{Err: firewall.ErrQueueClosed})
	_, err = f.client.FirewallRotateCA(callCtx(t), &adminv1.FirewallRotateCARequest{})
	wantReason(t, err, codes.Unavailable, cpgrpc.ReasonQueueClosed)
	if m := f.logLine(t, "firewall_rotate_ca").ContextMap(); m["code"] != codes.Unavailable.String() {
		t.Errorf("refusal logged as %v", m)
	}

	f = serve(t, nil)
	_, err = f.client.FirewallRotateCA(callCtx(t), &adminv1.FirewallRotateCARequest{})
	wantCode(t, err, codes.Unavailable, "no answer")
}
