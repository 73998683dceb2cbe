package registry_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

// indexRig is a real registry on a real sqlite file, and a second handle
// on the same file to read what sqlite holds (agentdb's own List).
type indexRig struct {
	sys  *actor.ActorSystem
	pid  *actor.PID
	c    registry.Client
	file *agentdb.DB
	logs *observer.ObservedLogs
}

// startIndexRig's registry never flushes on its own: a test sends
// registry.FlushNow.
func startIndexRig(t *testing.T, path string) *indexRig {
	t.Helper()
	sys := actortest.System(t)
	core, logs := observer.New(zapcore.DebugLevel)
	pid := sys.Root.Spawn(actor.PropsFromProducer(registry.New(registry.Config{
		Path: path, FlushInterval: time.Hour, OpTimeout: 5 * time.Second, Log: zap.New(core),
	})))
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	c := registry.NewClient(sys, pid, 10*time.Second)
	// The registry creates the file; wait for it before opening a reader.
	if h, err := c.CheckHealth(context.Background()); err != nil {
		t.Fatalf("registry: %v", err)
	} else {
		for h.Err != nil && errors.Is(h.Err, registry.ErrOpening) {
			time.Sleep(10 * time.Millisecond)
			if h, err = c.CheckHealth(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	file, err := agentdb.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = file.Close() })
	return &indexRig{sys: sys, pid: pid, c: c, file: file, logs: logs}
}

// hex64 is a 64-hex-digit id made from s (a thumbprint or container id).
func hex64(s string) string { return agentdb.Key(s, "") }

func agentOf(project, name, container string) agentdb.Agent {
	return agentdb.Agent{Project: project, AgentName: name, ContainerID: hex64("c-" + container), Thumbprint: hex64("t-" + container)}
}

func (r *indexRig) register(t *testing.T, a agentdb.Agent) *registry.RegisterResult {
	t.Helper()
	res, err := r.c.Register(context.Background(), registry.Register{Agent: a})
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	return res
}

func (r *indexRig) deleteContainer(t *testing.T, id string) *registry.DeleteResult {
	t.Helper()
	res, err := r.sys.Root.RequestFuture(r.pid, &registry.DeleteContainer{ContainerID: id}, 10*time.Second).Result()
	if err != nil {
		t.Fatalf("DeleteContainer: %v", err)
	}
	return res.(*registry.DeleteResult)
}

// listed is every binding the registry lists, walked in pages of page.
func (r *indexRig) listed(t *testing.T, page int) []agentdb.Agent {
	t.Helper()
	var all []agentdb.Agent
	after := registry.Cursor{}
	for {
		res, err := r.c.ListPage(context.Background(), registry.List{After: after, Limit: page})
		if err != nil || res.Err != nil {
			t.Fatalf("List: %v, %v", err, res.Err)
		}
		all = append(all, res.Agents...)
		if res.Total < len(all) {
			t.Fatalf("total %d, but %d listed so far", res.Total, len(all))
		}
		if !res.More {
			return all
		}
		if len(res.Agents) == 0 {
			t.Fatal("a page with none listed says more follow")
		}
		last := res.Agents[len(res.Agents)-1]
		after = registry.Cursor{Project: last.Project, AgentName: last.AgentName}
	}
}

// diff describes how the registry's list differs from sqlite's ("" when
// they are the same rows, in the same order).
func (r *indexRig) diff(t *testing.T) string {
	t.Helper()
	want, err := r.file.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, page := range []int{0, 1, 3} {
		got := r.listed(t, page)
		if len(got) != len(want) {
			return fmt.Sprintf("pages of %d: %d listed, sqlite holds %d:\n%s\nvs\n%s", page, len(got), len(want), show(got), show(want))
		}
		for i := range got {
			if !sameAgent(got[i], want[i]) {
				return fmt.Sprintf("pages of %d: row %d listed %+v, sqlite holds %+v", page, i, got[i], want[i])
			}
		}
	}
	return ""
}

func (r *indexRig) mustMatch(t *testing.T, step string) {
	t.Helper()
	if d := r.diff(t); d != "" {
		t.Fatalf("after %s: %s", step, d)
	}
}

func sameAgent(a, b agentdb.Agent) bool {
	return a.Key == b.Key && a.Project == b.Project && a.AgentName == b.AgentName && a.ContainerID == b.ContainerID &&
		a.Thumbprint == b.Thumbprint && a.RegisteredAt.Equal(b.RegisteredAt) && a.LastSeen.Equal(b.LastSeen)
}

func show(as []agentdb.Agent) string {
	var b strings.Builder
	for _, a := range as {
		fmt.Fprintf(&b, "  %s/%s %s… seen %s\n", a.Project, a.AgentName, a.ContainerID[:8], a.LastSeen.Format(time.RFC3339Nano))
	}
	return b.String()
}

// byName finds project/name in sqlite's rows.
func (r *indexRig) fileRow(t *testing.T, project, name string) (agentdb.Agent, bool) {
	t.Helper()
	all, err := r.file.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if a.Project == project && a.AgentName == name {
			return a, true
		}
	}
	return agentdb.Agent{}, false
}

// The list, read from memory, equals what sqlite holds after every kind
// of write: new bindings, an idempotent one, a name taken over by a new
// container, a refused one, a removed container and a last_seen flush.
func TestListFromMemoryMatchesTheFile(t *testing.T) {
	t.Parallel()
	r := startIndexRig(t, filepath.Join(t.TempDir(), "controlplane.db"))
	r.mustMatch(t, "open")

	for _, a := range []agentdb.Agent{agentOf("web", "dev", "1"), agentOf("api", "zed", "2"), agentOf("api", "bob", "3"), agentOf("web", "ci", "4")} {
		if res := r.register(t, a); res.Err != nil || !res.Created {
			t.Fatalf("Register %s/%s: %+v", a.Project, a.AgentName, res)
		}
	}
	r.mustMatch(t, "four new bindings")
	if n := len(r.listed(t, 0)); n != 4 {
		t.Fatalf("%d listed, want 4", n)
	}

	if res := r.register(t, agentOf("web", "dev", "1")); res.Err != nil || res.Created {
		t.Fatalf("idempotent Register: %+v", res)
	}
	r.mustMatch(t, "an idempotent Register")

	// A new container carrying web/dev: the old row is replaced.
	if res := r.register(t, agentOf("web", "dev", "5")); res.Err != nil || !res.Created {
		t.Fatalf("Register of a new container for web/dev: %+v", res)
	}
	r.mustMatch(t, "a name taken over")
	if a, _ := r.fileRow(t, "web", "dev"); a.ContainerID != hex64("c-5") {
		t.Fatalf("sqlite holds %+v for web/dev, want container 5", a)
	}

	// A container bound to another name is refused: nothing changes.
	if res := r.register(t, agentOf("api", "other", "2")); !errors.Is(res.Err, agentdb.ErrContainerBound) {
		t.Fatalf("Register of a bound container under another name: %+v", res)
	}
	r.mustMatch(t, "a refused Register")

	if d := r.deleteContainer(t, hex64("c-3")); d.Err != nil || d.Removed != 1 {
		t.Fatalf("DeleteContainer: %+v", d)
	}
	if d := r.deleteContainer(t, hex64("c-unknown")); d.Err != nil || d.Removed != 0 {
		t.Fatalf("DeleteContainer of an unknown container: %+v", d)
	}
	r.mustMatch(t, "a removed container")

	// last_seen: batched, written by the flush; once sqlite shows it,
	// the list shows it too.
	zed, _ := r.fileRow(t, "api", "zed")
	later := zed.LastSeen.Add(90 * time.Second)
	r.sys.Root.Send(r.pid, &registry.Seen{Key: zed.Key, At: later})
	r.sys.Root.Send(r.pid, &registry.Seen{Key: zed.Key, At: later.Add(-time.Hour)}) // older: ignored
	r.sys.Root.Send(r.pid, &registry.FlushNow{})
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, _ := r.fileRow(t, "api", "zed")
		if a.LastSeen.Equal(later) && r.diff(t) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flush of last_seen %s: sqlite holds %s; %s", later, a.LastSeen, r.diff(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Writes that sqlite rolled back leave the list as it was: a Register
// whose insert fails after it deleted the row it replaces, a failing
// DeleteContainer and a failing last_seen flush. The failures come from
// triggers the test adds to the file, so each write starts and aborts in
// sqlite itself.
func TestAbortedWritesAreNotListed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "controlplane.db")
	db, err := agentdb.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	doomed, keep := agentOf("p", "doomed", "1"), agentOf("p", "keep", "2")
	for _, a := range []agentdb.Agent{doomed, keep} {
		if _, _, err := db.Register(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TRIGGER test_refuse_insert BEFORE INSERT ON agents WHEN NEW.agent_name = 'doomed' BEGIN SELECT RAISE(ABORT, 'insert refused by the test'); END`,
		`CREATE TRIGGER test_refuse_delete BEFORE DELETE ON agents WHEN OLD.agent_name = 'keep' BEGIN SELECT RAISE(ABORT, 'delete refused by the test'); END`,
		`CREATE TRIGGER test_refuse_update BEFORE UPDATE ON agents WHEN OLD.agent_name = 'keep' BEGIN SELECT RAISE(ABORT, 'update refused by the test'); END`,
	} {
		if _, err := raw.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}

	r := startIndexRig(t, path)
	r.mustMatch(t, "open")
	before := r.listed(t, 0)

	// A new container for p/doomed: the old row's DELETE runs, the INSERT
	// aborts, the transaction rolls back.
	if res := r.register(t, agentOf("p", "doomed", "3")); res.Err == nil || !strings.Contains(res.Err.Error(), "insert refused by the test") {
		t.Fatalf("Register against the refusing trigger: %+v", res)
	}
	if d := r.deleteContainer(t, keep.ContainerID); d.Err == nil || !strings.Contains(d.Err.Error(), "delete refused by the test") {
		t.Fatalf("DeleteContainer against the refusing trigger: %+v", d)
	}
	// One batch with both: the update of keep aborts the whole flush, so
	// doomed's last_seen is not written either.
	r.sys.Root.Send(r.pid, &registry.Seen{Key: agentdb.Key(doomed.Thumbprint, doomed.ContainerID), At: time.Now().Add(time.Hour)})
	r.sys.Root.Send(r.pid, &registry.Seen{Key: agentdb.Key(keep.Thumbprint, keep.ContainerID), At: time.Now().Add(time.Hour)})
	r.sys.Root.Send(r.pid, &registry.FlushNow{})
	deadline := time.Now().Add(10 * time.Second)
	for r.logs.FilterField(zap.String("event", "registry_flush_failed")).Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no registry_flush_failed after the refused last_seen batch")
		}
		time.Sleep(10 * time.Millisecond)
	}

	r.mustMatch(t, "three aborted writes")
	after := r.listed(t, 0)
	if len(after) != len(before) {
		t.Fatalf("listed %d after the aborted writes, %d before", len(after), len(before))
	}
	for i := range after {
		if !sameAgent(after[i], before[i]) {
			t.Errorf("row %d: %+v after the aborted writes, %+v before", i, after[i], before[i])
		}
	}
}

// Registers racing from many requesters, several of them taking over the
// same names with new containers, and removals among them: the list still
// equals the file, whatever order the commits came in.
func TestConcurrentWritesKeepTheListInStep(t *testing.T) {
	t.Parallel()
	r := startIndexRig(t, filepath.Join(t.TempDir(), "controlplane.db"))
	var wg sync.WaitGroup
	errs := make(chan error, 8*40)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				a := agentOf("p", fmt.Sprintf("name-%02d", (w*7+i)%12), fmt.Sprintf("%d-%d", w, i))
				res, err := r.c.Register(context.Background(), registry.Register{Agent: a})
				switch {
				case err != nil:
					errs <- err
				case res.Err != nil:
					errs <- res.Err
				}
				if i%5 == 4 {
					_, _ = r.sys.Root.RequestFuture(r.pid, &registry.DeleteContainer{ContainerID: a.ContainerID}, 10*time.Second).Result()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Register: %v", err)
	}
	r.mustMatch(t, "racing writes")
}

// Page tokens: a cursor survives the trip; anything else is refused with
// ErrBadPageToken, and "" is the start.
func TestPageTokens(t *testing.T) {
	t.Parallel()
	for _, c := range []registry.Cursor{{"p", "a"}, {"project-with.dots", "agent"}, {strings.Repeat("x", 300), "\x00\xff"}} {
		got, err := registry.ParsePageToken(c.Token())
		if err != nil || got != c {
			t.Errorf("%q: round trip gave %q, %v", c, got, err)
		}
	}
	if c, err := registry.ParsePageToken(""); err != nil || c != (registry.Cursor{}) {
		t.Errorf(`"": %q, %v`, c, err)
	}
	for _, bad := range []string{"not base64!", "AAAA", "Ag", registry.Cursor{"p", "a"}.Token() + "=", "AQ", "AQVwYQ", "AQBh", "AQFw", strings.Repeat("A", 9000)} {
		if c, err := registry.ParsePageToken(bad); !errors.Is(err, registry.ErrBadPageToken) {
			t.Errorf("%q: %q, %v; want ErrBadPageToken", bad, c, err)
		}
	}
}
