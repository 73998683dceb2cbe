package firewall_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/ebpf"
	"github.com/clawker/clawker-cp/actors/firewall"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// publications records every Doc the firewall published.
type publications struct {
	mu   sync.Mutex
	docs []egressrules.Doc
}

func (p *publications) publish(d egressrules.Doc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.docs = append(p.docs, d)
}

func (p *publications) all() []egressrules.Doc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.docs)
}

// stateEBPF answers GetState with an empty, loaded state: enough for the
// status of an enabled firewall.
type stateEBPF struct{}

func (stateEBPF) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*ebpf.GetState); ok {
		ctx.Respond(&ebpf.State{Loaded: true})
	}
}

// spawnRules runs a firewall with cfg (tree, intensity and timeouts filled
// in) under the stand-in root and waits for its Ready.
// An overseer actor given replaces the one that only takes subscriptions.
func spawnRules(t *testing.T, cfg firewall.Config, overseerActor ...actor.Actor) *rig {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	tree := supervise.NewTree()
	in := supervise.Intensity{Max: 5, Window: time.Minute}
	cfg.Tree, cfg.Intensity = tree, in
	if cfg.Enable {
		cfg.EBPF = sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return stateEBPF{} }))
		ov := actor.Actor(&subscriberSink{subscribed: make(chan *actor.PID, 4)})
		if len(overseerActor) > 0 {
			ov = overseerActor[0]
		}
		cfg.Overseer = sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return ov }))
		cfg.Network = firewall.AgentNetwork{Name: "clawker-net", Subnet: testSubnet, Gateway: netip.MustParseAddr("10.99.7.1")}
		cfg.ProxyPort, cfg.StackWait, cfg.StackDial = 15001, 300*time.Millisecond, answerOK
		cfg.OpTimeout, cfg.Log = 5*time.Second, zap.NewNop()
	}
	ready := make(chan *supervise.Ready, 4)
	p := &parent{props: func() *actor.Props { return tree.SpecProps(firewall.Spec(cfg), in) }, ready: ready}
	top, err := sys.Root.SpawnNamed(tree.Props(func() actor.Actor { return p }, in), "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sys.Root.StopFuture(top).Wait()
		sys.Shutdown()
	})
	select {
	case m := <-ready:
		if m.Err != nil {
			t.Fatalf("Ready = %v", m.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the firewall never reported Ready")
	}
	fw, _ := tree.Lookup("cp/firewall")
	return &rig{sys: sys, tree: tree, fw: fw, stepTimeout: time.Second}
}

func (r *rig) rules(t *testing.T, msg any) *firewall.RulesResult {
	t.Helper()
	res, err := r.sys.Root.RequestFuture(r.fw, msg, 5*time.Second).Result()
	if err != nil {
		t.Fatalf("%T: %v", msg, err)
	}
	rr, ok := res.(*firewall.RulesResult)
	if !ok {
		t.Fatalf("%T answered %T", msg, res)
	}
	return rr
}

func rule(dst string, proto egressrules.Proto, port uint16, action egressrules.Action) egressrules.Rule {
	r := egressrules.Rule{Dst: dst, Proto: proto, Action: action}
	if port != 0 {
		r.Port = egressrules.Port(port)
	}
	return r
}

func keys(entries []egressrules.Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Key()+"="+string(e.Action))
	}
	return out
}

// wantGenerations checks the Docs' generations strictly grow, the first
// one no lower than since (in unix nanoseconds).
func wantGenerations(t *testing.T, docs []egressrules.Doc, since time.Time) {
	t.Helper()
	for i, d := range docs {
		if i == 0 && !since.IsZero() && d.Generation < uint64(since.UnixNano()) {
			t.Errorf("first generation %d is below the boot instant %d", d.Generation, since.UnixNano())
		}
		if i > 0 && d.Generation <= docs[i-1].Generation {
			t.Errorf("generation %d after %d: not increasing", d.Generation, docs[i-1].Generation)
		}
	}
}

func TestAddRulesStatusesAndPublish(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pubs := &publications{}
	boot := time.Now()
	r := spawnRules(t, firewall.Config{RulesDir: dir, Publish: pubs.publish, PrivateDestinations: []string{"172.30.0.1"}})

	// At start, the (empty) store is published once.
	docs := pubs.all()
	if len(docs) != 1 || len(docs[0].Rules) != 0 || !reflect.DeepEqual(docs[0].PrivateDestinations, []string{"172.30.0.1"}) {
		t.Fatalf("docs at start %+v, want one empty Doc with the private destinations", docs)
	}

	res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{
		rule("Example.COM.", "", 0, ""),
		rule("10.0.0.0/8", egressrules.TCP, 5432, egressrules.Deny),
	}})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if want := []egressrules.Status{egressrules.Added, egressrules.Added}; !reflect.DeepEqual(res.Statuses, want) {
		t.Errorf("statuses %v, want %v", res.Statuses, want)
	}
	if got, want := keys(res.Rules), []string{"10.0.0.0/8:tcp:5432=deny", "example.com:https:443=allow"}; !reflect.DeepEqual(got, want) {
		t.Errorf("stored %v, want %v", got, want)
	}
	for _, e := range res.Rules {
		if e.ID == 0 {
			t.Errorf("%s stored without an id", e.Key())
		}
	}

	// The same rules again change nothing and publish nothing.
	res = r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule("example.com", egressrules.HTTPS, 443, egressrules.Allow)}})
	if res.Err != nil || !reflect.DeepEqual(res.Statuses, []egressrules.Status{egressrules.Unchanged}) {
		t.Errorf("re-add: %v, %v", res.Statuses, res.Err)
	}
	// Another action for the same key modifies it.
	res = r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{
		rule("example.com", "", 0, egressrules.Deny),
		rule(".github.com", egressrules.SSH, 0, ""),
	}})
	if want := []egressrules.Status{egressrules.Modified, egressrules.Added}; res.Err != nil || !reflect.DeepEqual(res.Statuses, want) {
		t.Errorf("modify: %v, %v; want %v", res.Statuses, res.Err, want)
	}

	docs = pubs.all()
	if len(docs) != 3 {
		t.Fatalf("%d Docs published, want 3 (start, first add, modify; not the unchanged add)", len(docs))
	}
	wantGenerations(t, docs, boot)
	last := docs[2]
	if got, want := keys(last.Rules), []string{".github.com:ssh:22=allow", "10.0.0.0/8:tcp:5432=deny", "example.com:https:443=deny"}; !reflect.DeepEqual(got, want) {
		t.Errorf("last Doc %v, want %v", got, want)
	}
	if !reflect.DeepEqual(last.Rules, res.Rules) {
		t.Errorf("last Doc %+v differs from the store's answer %+v", last.Rules, res.Rules)
	}
}

// One bad rule rejects the batch: the file is not touched, nothing is
// published, and every bad field is named.
func TestAddRulesRejectsTheWholeBatch(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pubs := &publications{}
	r := spawnRules(t, firewall.Config{RulesDir: dir, Publish: pubs.publish})
	if res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule("example.com", "", 0, "")}}); res.Err != nil {
		t.Fatal(res.Err)
	}
	path := filepath.Join(dir, egressrules.RulesFileName)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := len(pubs.all())

	res := r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{
		rule("good.example.com", "", 0, ""),
		rule("intranet", "", 0, ""),
		{Dst: "db.example.com", Proto: egressrules.TCP, Port: egressrules.PortRange{Lo: 9000, Hi: 8000}, Action: "maybe"},
	}})
	if res.Err == nil {
		t.Fatal("a batch with bad rules was accepted")
	}
	if errors.Is(res.Err, firewall.ErrRuleStore) {
		t.Errorf("a bad rule reported as a store failure: %v", res.Err)
	}
	var got []string
	for _, e := range unwrapAll(res.Err) {
		var fe *egressrules.FieldError
		if errors.As(e, &fe) {
			got = append(got, fmt.Sprintf("%s@%d", fe.Field, fe.Index))
		}
	}
	if want := []string{"dst@1", "port@2", "action@2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("field errors %v, want %v (%v)", got, want, res.Err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("the store file changed on a rejected batch:\n%s\nwas\n%s", after, before)
	}
	if len(pubs.all()) != n {
		t.Error("a rejected batch was published")
	}
	list := r.rules(t, &firewall.ListRules{})
	if got := keys(list.Rules); !reflect.DeepEqual(got, []string{"example.com:https:443=allow"}) {
		t.Errorf("store after the rejected batch %v", got)
	}
}

func unwrapAll(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		return u.Unwrap()
	}
	return []error{err}
}

func TestRemoveRule(t *testing.T) {
	t.Parallel()
	pubs := &publications{}
	r := spawnRules(t, firewall.Config{RulesDir: t.TempDir(), Publish: pubs.publish})
	r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{
		rule("example.com", "", 0, ""), rule("example.com", egressrules.HTTP, 0, ""), rule("10.1.2.3", egressrules.TCP, 22, ""),
	}})
	n := len(pubs.all())

	// A rule that is not stored is a status, not an error, and publishes
	// nothing.
	res := r.rules(t, &firewall.RemoveRule{Rule: rule("example.com", egressrules.HTTPS, 8443, "")})
	if res.Err != nil || !reflect.DeepEqual(res.Statuses, []egressrules.Status{egressrules.NotFound}) || res.Removed != 0 || len(res.Rules) != 3 {
		t.Errorf("remove of a missing rule: %+v", res)
	}
	if len(pubs.all()) != n {
		t.Error("a removal that removed nothing was published")
	}
	// Defaults apply and the action does not matter.
	res = r.rules(t, &firewall.RemoveRule{Rule: rule("EXAMPLE.com", "", 0, egressrules.Deny)})
	if res.Err != nil || !reflect.DeepEqual(res.Statuses, []egressrules.Status{egressrules.Removed}) || res.Removed != 1 {
		t.Errorf("remove: %+v", res)
	}
	if got := keys(res.Rules); !reflect.DeepEqual(got, []string{"10.1.2.3:tcp:22=allow", "example.com:http:80=allow"}) {
		t.Errorf("left %v", got)
	}
	// A malformed rule is refused, naming the field.
	res = r.rules(t, &firewall.RemoveRule{Rule: rule("db.example.com", egressrules.TCP, 0, "")})
	var fe *egressrules.FieldError
	if !errors.As(res.Err, &fe) || fe.Field != "port" {
		t.Errorf("remove of a tcp rule without port: %v", res.Err)
	}

	res = r.rules(t, &firewall.RemoveRule{All: true})
	if res.Err != nil || res.Removed != 2 || len(res.Rules) != 0 || !reflect.DeepEqual(res.Statuses, []egressrules.Status{egressrules.Removed}) {
		t.Errorf("remove all: %+v", res)
	}
	docs := pubs.all()
	if len(docs) != n+2 || len(docs[len(docs)-1].Rules) != 0 {
		t.Errorf("%d Docs, want %d (the removal and remove-all), the last empty", len(docs), n+2)
	}
	wantGenerations(t, docs, time.Time{})
	// Removing all of nothing changes nothing.
	if res := r.rules(t, &firewall.RemoveRule{All: true}); res.Err != nil || res.Removed != 0 || len(pubs.all()) != n+2 {
		t.Errorf("remove all on an empty store: %+v, %d Docs", res, len(pubs.all()))
	}
}

// Reload publishes what the file holds now, hand edits included.
func TestReloadRules(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pubs := &publications{}
	r := spawnRules(t, firewall.Config{RulesDir: dir, Publish: pubs.publish})
	r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule("example.com", "", 0, "")}})
	edited := "rules:\n  - dst: Example.com\n  - dst: registry.npmjs.org\n    action: deny\n"
	if err := os.WriteFile(filepath.Join(dir, egressrules.RulesFileName), []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	res := r.rules(t, &firewall.ReloadRules{})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	want := []string{"example.com:https:443=allow", "registry.npmjs.org:https:443=deny"}
	if got := keys(res.Rules); !reflect.DeepEqual(got, want) {
		t.Errorf("reloaded %v, want %v", got, want)
	}
	docs := pubs.all()
	if len(docs) != 3 || !reflect.DeepEqual(keys(docs[2].Rules), want) {
		t.Fatalf("Docs %+v, want start, add and reload", docs)
	}
	wantGenerations(t, docs, time.Time{})
	// The edited rule kept its id; the new one got a fresh one.
	if res.Rules[0].ID != docs[1].Rules[0].ID || res.Rules[1].ID == 0 || res.Rules[1].ID == res.Rules[0].ID {
		t.Errorf("ids after reload %+v (before %+v)", res.Rules, docs[1].Rules)
	}
}

// ListRules answers the store's canonical order, whatever order and case
// the rules were added in.
func TestListRulesCanonical(t *testing.T) {
	t.Parallel()
	r := spawnRules(t, firewall.Config{RulesDir: t.TempDir()})
	r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{
		rule("Zeta.example.com", egressrules.HTTP, 8080, ""),
		{Dst: "10.2.0.0/16", Proto: egressrules.TCP, Port: egressrules.PortRange{Lo: 8000, Hi: 8100}},
		rule("alpha.example.com", egressrules.HTTPS, 0, egressrules.Deny),
		rule("10.2.3.4/32", egressrules.TCP, 22, ""),
	}})
	res := r.rules(t, &firewall.ListRules{})
	want := []string{"10.2.0.0/16:tcp:8000-8100=allow", "10.2.3.4:tcp:22=allow", "alpha.example.com:https:443=deny", "zeta.example.com:http:8080=allow"}
	if got := keys(res.Rules); res.Err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("list %v (%v), want %v", got, res.Err, want)
	}
}

// After firewall_queue_close rule mutations are refused; reads still work.
func TestRulesRefusedAfterQueueClose(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pubs := &publications{}
	r := spawnRules(t, firewall.Config{RulesDir: dir, Publish: pubs.publish})
	r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule("example.com", "", 0, "")}})
	if d := r.step(t, cpapi.StepFirewallQueueClose); d.Outcome != supervise.OutcomeDone {
		t.Fatalf("queue close = %+v", d)
	}
	n := len(pubs.all())
	for _, msg := range []any{
		&firewall.AddRules{Rules: []egressrules.Rule{rule("other.example.com", "", 0, "")}},
		&firewall.RemoveRule{Rule: rule("example.com", "", 0, "")},
		&firewall.RemoveRule{All: true},
		&firewall.ReloadRules{},
	} {
		if res := r.rules(t, msg); !errors.Is(res.Err, firewall.ErrQueueClosed) {
			t.Errorf("%T after the queue closed: %v, want ErrQueueClosed", msg, res.Err)
		}
	}
	if len(pubs.all()) != n {
		t.Error("a refused mutation was published")
	}
	res := r.rules(t, &firewall.ListRules{})
	if got := keys(res.Rules); res.Err != nil || !reflect.DeepEqual(got, []string{"example.com:https:443=allow"}) {
		t.Errorf("list after the queue closed: %v, %v", got, res.Err)
	}
}

// A restarted firewall (or control plane) never publishes a generation
// below the last one of its predecessor.
func TestGenerationSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := &publications{}
	r := spawnRules(t, firewall.Config{RulesDir: dir, Publish: first.publish})
	for _, d := range []string{"a.example.com", "b.example.com", "c.example.com"} {
		r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule(d, "", 0, "")}})
	}
	prev := first.all()
	second := &publications{}
	spawnRules(t, firewall.Config{RulesDir: dir, Publish: second.publish})
	next := second.all()
	if len(next) != 1 || next[0].Generation <= prev[len(prev)-1].Generation {
		t.Fatalf("restart published %+v after generation %d", next, prev[len(prev)-1].Generation)
	}
	if got := keys(next[0].Rules); len(got) != 3 {
		t.Errorf("restart published %v, want the three stored rules", got)
	}
}

// A store that cannot be read is ErrRuleStore, naming the file; the
// firewall still starts (and publishes nothing: the stack stays closed).
func TestRuleStoreErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, egressrules.RulesFileName), []byte("rules:\n  - dst: intranet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pubs := &publications{}
	r := spawnRules(t, firewall.Config{RulesDir: dir, Publish: pubs.publish})
	if n := len(pubs.all()); n != 0 {
		t.Errorf("%d Docs published from an unreadable store", n)
	}
	for _, msg := range []any{&firewall.ListRules{}, &firewall.ReloadRules{}, &firewall.AddRules{Rules: []egressrules.Rule{rule("example.com", "", 0, "")}}} {
		res := r.rules(t, msg)
		if !errors.Is(res.Err, firewall.ErrRuleStore) {
			t.Errorf("%T on a broken store: %v, want ErrRuleStore", msg, res.Err)
		}
	}

	// Without a rules directory every rule request says so.
	bare := spawnRules(t, firewall.Config{})
	if res := bare.rules(t, &firewall.ListRules{}); !errors.Is(res.Err, firewall.ErrRuleStore) {
		t.Errorf("list without a store: %v", res.Err)
	}
}

func TestStatusCountsRulesAndNamesTheNetwork(t *testing.T) {
	t.Parallel()
	for _, enable := range []bool{false, true} {
		r := spawnRules(t, firewall.Config{Enable: enable, RulesDir: t.TempDir()})
		r.rules(t, &firewall.AddRules{Rules: []egressrules.Rule{rule("a.example.com", "", 0, ""), rule("b.example.com", "", 0, "")}})
		res, err := r.sys.Root.RequestFuture(r.fw, &firewall.GetStatus{}, 5*time.Second).Result()
		if err != nil {
			t.Fatal(err)
		}
		st, ok := res.(*firewall.Status)
		if !ok {
			t.Fatalf("enable=%v: status answered %#v", enable, res)
		}
		want := firewall.Status{Rules: 2}
		if enable {
			want = firewall.Status{Enabled: true, Rules: 2, Network: "clawker-net", Subnet: testSubnet.String()}
		}
		if st.Enabled != want.Enabled || st.Rules != want.Rules || st.Network != want.Network || st.Subnet != want.Subnet {
			t.Errorf("enable=%v: status %+v, want %+v", enable, st, want)
		}
	}
}

// The count a status reports is that of the rules loaded at start too, not
// only of those changed since.
func TestStatusCountsTheRulesLoadedAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, _, err := egressrules.OpenStore(dir).Add([]egressrules.Rule{rule("a.example.com", "", 0, ""), rule("b.example.com", "", 0, ""), rule("c.example.com", "", 0, "")}); err != nil {
		t.Fatal(err)
	}
	r := spawnRules(t, firewall.Config{RulesDir: dir})
	res, err := r.sys.Root.RequestFuture(r.fw, &firewall.GetStatus{}, 5*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := res.(*firewall.Status); !ok || st.Rules != 3 {
		t.Fatalf("status %#v, want 3 rules", res)
	}
}
