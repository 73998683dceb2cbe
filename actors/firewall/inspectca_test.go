package firewall_test

import (
	"bytes"
	"errors"
	"io/fs"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// caSink records what the firewall hands the stack service.
type caSink struct {
	mu   sync.Mutex
	got  [][2][]byte // cert, key
	seen chan struct{}
}

func newCASink() *caSink { return &caSink{seen: make(chan struct{}, 16)} }

func (s *caSink) set(certPEM, keyPEM []byte) {
	s.mu.Lock()
	s.got = append(s.got, [2][]byte{certPEM, keyPEM})
	s.mu.Unlock()
	s.seen <- struct{}{}
}

func (s *caSink) all() [][2][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][2][]byte(nil), s.got...)
}

// wantLast checks the last CA handed over is ca, cert and key, and that
// n were handed over in all.
func (s *caSink) wantLast(t *testing.T, ca *certs.FirewallCA, n int) {
	t.Helper()
	got := s.all()
	if len(got) != n {
		t.Fatalf("the stack service was given %d CAs, want %d", len(got), n)
	}
	if n > 0 && (!bytes.Equal(got[n-1][0], ca.CertPEM) || !bytes.Equal(got[n-1][1], ca.KeyPEM)) {
		t.Errorf("the stack service holds another CA than %s", ca.Fingerprint)
	}
}

func inspected(dst string) egressrules.Rule {
	return egressrules.Rule{Dst: dst, Proto: egressrules.HTTPS, Port: egressrules.Port(443), Action: egressrules.Allow,
		PathRules: []egressrules.PathRule{{Path: "/v1/"}}}
}

func loadCA(t *testing.T, dir string) *certs.FirewallCA {
	t.Helper()
	ca, err := certs.LoadFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// A CA on disk is handed to the stack service at start.
func TestInspectCALoadedAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, _, err := certs.EnsureFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	sink := newCASink()
	spawnRules(t, firewall.Config{Enable: true, RulesDir: dir, Publish: (&publications{}).publish, InspectCA: sink.set})
	sink.wantLast(t, ca, 1)
	if loadCA(t, dir).Fingerprint != ca.Fingerprint {
		t.Error("start replaced the CA")
	}
}

// No CA is made until a rule inspects a name; then it is made once, and
// handed over.
func TestInspectCAMadeOnFirstPathRule(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sink := newCASink()
	r := spawnRules(t, firewall.Config{Enable: true, RulesDir: dir, Publish: (&publications{}).publish, InspectCA: sink.set})
	if res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule("example.com", "", 0, "")}}); res.Err != nil {
		t.Fatal(res.Err)
	}
	if _, err := certs.LoadFirewallCA(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a CA exists without a path rule: %v", err)
	}
	sink.wantLast(t, nil, 0)

	if res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{inspected("api.example.com")}}); res.Err != nil {
		t.Fatal(res.Err)
	}
	ca := loadCA(t, dir)
	sink.wantLast(t, ca, 1)
	if res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{inspected("other.example.com")}}); res.Err != nil {
		t.Fatal(res.Err)
	}
	sink.wantLast(t, ca, 1)
	if loadCA(t, dir).Fingerprint != ca.Fingerprint {
		t.Error("a second path rule replaced the CA")
	}
}

// Stored rules that inspect make the CA at start.
func TestInspectCAMadeAtStartForStoredPathRules(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, _, err := egressrules.OpenStore(dir).Add([]egressrules.Rule{inspected("api.example.com")}); err != nil {
		t.Fatal(err)
	}
	sink := newCASink()
	spawnRules(t, firewall.Config{Enable: true, RulesDir: dir, Publish: (&publications{}).publish, InspectCA: sink.set})
	sink.wantLast(t, loadCA(t, dir), 1)
}

// worldOverseer answers GetState with containers.
type worldOverseer struct{ containers []cpapi.ContainerView }

func (o *worldOverseer) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*overseer.GetState); ok {
		ctx.Respond(&overseer.State{Containers: o.containers})
	}
}

// RotateCA replaces the CA on disk and in the stack service, and names the
// running agents (without a Docker client to read their labels: all of
// them, as each was started before the rotation).
func TestRotateCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old, _, err := certs.EnsureFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	sink := newCASink()
	ov := &worldOverseer{containers: []cpapi.ContainerView{
		{ID: "c1", Purpose: dockerx.PurposeAgent, Project: "web", Agent: "b", State: cpapi.ContainerRunning},
		{ID: "c2", Purpose: dockerx.PurposeAgent, Project: "api", Agent: "a", State: cpapi.ContainerRunning},
		{ID: "c3", Purpose: dockerx.PurposeAgent, Project: "api", Agent: "stopped", State: cpapi.ContainerStopped},
		{ID: "c4", Purpose: dockerx.PurposeControlPlane, State: cpapi.ContainerRunning},
	}}
	r := spawnRules(t, firewall.Config{Enable: true, RulesDir: dir, Publish: (&publications{}).publish, InspectCA: sink.set}, ov)
	res, err := r.sys.Root.RequestFuture(r.fw, &firewall.RotateCA{}, 10*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	rr, ok := res.(*firewall.RotateCAResult)
	if !ok || rr.Err != nil {
		t.Fatalf("RotateCA answered %#v", res)
	}
	cur := loadCA(t, dir)
	if rr.Fingerprint != cur.Fingerprint || rr.PreviousFingerprint != old.Fingerprint || cur.Fingerprint == old.Fingerprint {
		t.Errorf("answer %s (previous %s); on disk %s, before %s", rr.Fingerprint, rr.PreviousFingerprint, cur.Fingerprint, old.Fingerprint)
	}
	if want := []string{"api/a", "web/b"}; !reflect.DeepEqual(rr.StillTrustingOld, want) {
		t.Errorf("still trusting the old CA: %v, want %v", rr.StillTrustingOld, want)
	}
	sink.wantLast(t, cur, 2) // the old one at start, the new one
}

// Without a rules directory there is nothing to rotate.
func TestRotateCAWithoutDir(t *testing.T) {
	t.Parallel()
	r := spawnRules(t, firewall.Config{})
	res, err := r.sys.Root.RequestFuture(r.fw, &firewall.RotateCA{}, 5*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	if rr, ok := res.(*firewall.RotateCAResult); !ok || rr.Err == nil {
		t.Fatalf("RotateCA answered %#v, want an error", res)
	}
}
