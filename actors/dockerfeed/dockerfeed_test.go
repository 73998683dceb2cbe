package dockerfeed_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"

	"github.com/clawker/clawker-cp/actors/dockerfeed"
	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// The feeder subscribes before it lists, reconciles the listing into
// synthetic transitions, and applies an event that arrived during the
// listing after the reconcile.
func TestReconcileAfterSubscribe(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	d.set("a1", "clawker.p.a", container.StateRunning, agentLabels("p", "a"))
	d.set("b2", "clawker.p.b", container.StateExited, agentLabels("p", "b"))
	d.exitCodes["b2"] = 3
	d.set("c3", "clawker.p.c", container.StateCreated, agentLabels("p", "c"))
	d.set("e5", "clawker-dns", container.StateRunning, otherLabels("dns"))
	// While the daemon lists, a container starts: the listing predates it,
	// the stream tells it.
	d.onList = func() {
		d.onList = nil // the hook runs under no lock; only once
		s := d.subs[0]
		s.msgs <- event(events.ActionStart, "d4", "clawker.p.d", time.Now().Add(time.Millisecond), agentLabels("p", "d"))
	}
	r := startRig(t, d, rigOpts{})

	r.waitEvents(t, "started a1 (r)", "stopped b2 3 (r)", "started e5 (r)", "started d4")
	calls := d.callLog()
	if len(calls) < 2 || calls[0] != "events since=" || calls[1] != "list" {
		t.Fatalf("calls %q: want the subscription (without Since) before the listing", calls)
	}
	if !slices.Contains(calls, "inspect b2") || slices.Contains(calls, "inspect a1") {
		t.Errorf("calls %q: want an inspect of the stopped container only", calls)
	}

	st := r.state(t)
	got := map[string]cpapi.ContainerView{}
	for _, c := range st.Containers {
		got[c.ID] = c
	}
	if len(got) != 4 {
		t.Fatalf("worldview %+v: want a1, b2, d4, e5 (c3 never started)", st.Containers)
	}
	if a := got["a1"]; a.State != cpapi.ContainerRunning || a.Name != "clawker.p.a" || a.Purpose != "agent" || a.Project != "p" || a.Agent != "a" {
		t.Errorf("a1: %+v", a)
	}
	if b := got["b2"]; b.State != cpapi.ContainerStopped || b.ExitCode != 3 {
		t.Errorf("b2: %+v", b)
	}
	if e := got["e5"]; e.Purpose != "dns" || e.Project != "" {
		t.Errorf("e5: %+v", e)
	}
	if c := r.logged("dockerfeed_connected"); len(c) != 1 || c[0].ContextMap()["containers"] != int64(4) {
		t.Errorf("dockerfeed_connected lines %v", c)
	}
}

// An event stream that ends is resubscribed with Since = the last event's
// time; the new listing reconciles what the stream missed (a container
// removed while the daemon was away) and a replayed event is not published
// twice.
func TestReconnectWithSince(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	r, s0 := connectedRig(t, d)

	t1 := time.Now()
	d.set("x1", "clawker.p.x", container.StateRunning, agentLabels("p", "x"))
	s0.emit(t, event(events.ActionStart, "x1", "clawker.p.x", t1, agentLabels("p", "x")))
	r.waitEvents(t, "started x1")

	// The daemon goes away; meanwhile x1 is removed and y2 started.
	d.setDown(true)
	s0.end(fmt.Errorf("unexpected EOF"))
	testkit.WaitForSeen(t, 5*time.Second, "a failed reconnect", func() (bool, string) {
		return len(r.logged("dockerfeed_unavailable")) > 0, fmt.Sprint(d.callLog())
	})
	d.remove("x1")
	d.set("y2", "clawker.q.y", container.StateRunning, agentLabels("q", "y"))
	d.setDown(false)

	s1 := r.waitSub(t, 1)
	want := fmt.Sprintf("%d.%09d", t1.UnixNano()/1e9, t1.UnixNano()%1e9)
	if s1.since != want {
		t.Errorf("resubscribed with Since %q, want the last event's time %q", s1.since, want)
	}
	// Since is inclusive: the daemon replays the last event.
	s1.emit(t, event(events.ActionStart, "x1", "clawker.p.x", t1, agentLabels("p", "x")))
	r.waitEvents(t, "started x1", "started y2 (r)", "destroyed x1 (r)")
	testkit.WaitForSeen(t, 5*time.Second, "the registry delete of x1", func() (bool, string) {
		got := r.reg.all()
		return slices.Equal(got, []string{"x1"}), fmt.Sprint(got)
	})
	rc := r.logged("dockerfeed_reconnected")
	if len(rc) != 1 {
		t.Fatalf("dockerfeed_reconnected lines %v, want one", rc)
	}
	if s, _ := rc[0].ContextMap()["since"].(string); !strings.HasPrefix(s, t1.UTC().Format("2006-01-02T15:04:05")) {
		t.Errorf("dockerfeed_reconnected since %q, want %s", s, t1.UTC().Format(time.RFC3339Nano))
	}
	if dc := r.logged("dockerfeed_disconnected"); len(dc) != 1 {
		t.Errorf("dockerfeed_disconnected lines %v, want one", dc)
	}

	// Live events flow on the new subscription.
	s1.emit(t, event(events.ActionDie, "y2", "clawker.q.y", time.Now(), agentLabels("q", "y"), "exitCode", "0"))
	r.waitEvents(t, "started x1", "started y2 (r)", "destroyed x1 (r)", "stopped y2 0")
}

// A destroyed agent container leaves the worldview and the registry; other
// managed containers only leave the worldview.
func TestDestroyDeletesAgentFromRegistry(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	d.set("a1", "clawker.p.a", container.StateRunning, agentLabels("p", "a"))
	d.set("n9", "clawker-proxy", container.StateRunning, otherLabels("proxy"))
	r := startRig(t, d, rigOpts{})
	r.waitEvents(t, "started a1 (r)", "started n9 (r)")
	s := r.waitSub(t, 0)

	now := time.Now()
	s.emit(t, event(events.ActionDie, "a1", "clawker.p.a", now, agentLabels("p", "a"), "exitCode", "137"))
	s.emit(t, event(events.ActionStop, "a1", "clawker.p.a", now.Add(time.Millisecond), agentLabels("p", "a")))
	s.emit(t, event(events.ActionDestroy, "a1", "clawker.p.a", now.Add(2*time.Millisecond), agentLabels("p", "a")))
	s.emit(t, event(events.ActionDestroy, "n9", "clawker-proxy", now.Add(3*time.Millisecond), otherLabels("proxy")))
	r.waitEvents(t, "started a1 (r)", "started n9 (r)", "stopped a1 137", "destroyed a1", "destroyed n9")
	testkit.WaitForSeen(t, 5*time.Second, "the registry delete", func() (bool, string) {
		got := r.reg.all()
		return slices.Equal(got, []string{"a1"}), fmt.Sprint(got)
	})
	if st := r.state(t); len(st.Containers) != 0 {
		t.Errorf("destroyed containers still in the worldview: %+v", st.Containers)
	}
	if l := r.logged("dockerfeed_registry_delete"); len(l) != 1 || l[0].ContextMap()["container_id"] != "a1" {
		t.Errorf("dockerfeed_registry_delete lines %v", l)
	}
	time.Sleep(50 * time.Millisecond)
	if got := r.reg.all(); len(got) != 1 {
		t.Errorf("registry deletes %q, want only a1", got)
	}
}

// Renames and stop/start cycles become one transition each.
func TestLifecycleEvents(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	r, s := connectedRig(t, d)
	l := agentLabels("p", "a")
	at := time.Now()
	next := func() time.Time { at = at.Add(time.Millisecond); return at }
	s.emit(t, event(events.ActionCreate, "a1", "old", next(), l))
	s.emit(t, event(events.ActionRename, "a1", "new0", next(), l, "oldName", "/old")) // before start: silent
	s.emit(t, event(events.ActionStart, "a1", "new0", next(), l))
	s.emit(t, event(events.ActionStart, "a1", "new0", next(), l)) // duplicate
	s.emit(t, event(events.ActionRename, "a1", "new1", next(), l, "oldName", "/new0"))
	s.emit(t, event(events.ActionStop, "a1", "new1", next(), l)) // no die seen: exit unknown
	s.emit(t, event(events.ActionDie, "a1", "new1", next(), l, "exitCode", "2"))
	s.emit(t, event(events.ActionStart, "a1", "new1", next(), l))
	r.waitEvents(t, "started a1", "renamed a1 new0->new1", "stopped a1 -1", "stopped a1 2", "started a1")
	st := r.state(t)
	if len(st.Containers) != 1 || st.Containers[0].Name != "new1" || st.Containers[0].State != cpapi.ContainerRunning {
		t.Errorf("worldview %+v", st.Containers)
	}
}

// Docker away at start: the feeder still reports Ready (startRig checks),
// says why, and connects once the daemon answers.
func TestUnavailableAtStartThenConnects(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	d.setDown(true)
	r := startRig(t, d, rigOpts{})
	testkit.WaitForSeen(t, 5*time.Second, "dockerfeed_unavailable", func() (bool, string) {
		return len(r.logged("dockerfeed_unavailable")) >= 2, fmt.Sprint(d.callLog())
	})
	u := r.logged("dockerfeed_unavailable")[0].ContextMap()
	if e, _ := u["error"].(string); !strings.Contains(e, "Cannot connect to the Docker daemon") {
		t.Errorf("dockerfeed_unavailable without the reason: %v", u)
	}
	d.set("a1", "clawker.p.a", container.StateRunning, agentLabels("p", "a"))
	d.setDown(false)
	r.waitEvents(t, "started a1 (r)")
	c := r.logged("dockerfeed_connected")
	if len(c) != 1 {
		t.Fatalf("dockerfeed_connected lines %v, want one", c)
	}
	if s := c[0].ContextMap()["since"]; s != "" {
		t.Errorf("first connection with since %v, want none", s)
	}
	if n := len(r.logged("dockerfeed_reconnected")); n != 0 {
		t.Errorf("%d dockerfeed_reconnected lines before the first connection", n)
	}
}

// A daemon that accepts the connection but never answers does not hold the
// feeder: the subscription's set-up is bounded and retried.
func TestSubscribeIsBounded(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	d.hangEvents = true
	r := startRig(t, d, rigOpts{callTimeout: 50 * time.Millisecond})
	testkit.WaitForSeen(t, 5*time.Second, "two bounded attempts", func() (bool, string) {
		return len(r.logged("dockerfeed_unavailable")) >= 2, fmt.Sprint(d.callLog())
	})
	e, _ := r.logged("dockerfeed_unavailable")[0].ContextMap()["error"].(string)
	if !strings.Contains(e, dockerx.ErrTimeout.Error()) {
		t.Errorf("error %q does not say the call timed out", e)
	}
	// The feeder's mailbox is not blocked meanwhile.
	r.sys.Root.Send(r.feeder, &dockerfeed.Resync{})
	testkit.WaitForSeen(t, 5*time.Second, "the resync", func() (bool, string) {
		return len(r.logged("dockerfeed_resync")) == 1, ""
	})
}

// A feeder that starts (or restarts) next to an overseer that already knows
// containers starts from that worldview: a container gone meanwhile is
// reconciled away instead of lingering.
func TestSeedFromOverseer(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	d.set("a1", "clawker.p.a", container.StateRunning, agentLabels("p", "a"))
	at := time.Now().Add(-time.Minute)
	r := startRig(t, d, rigOpts{seed: []any{
		&overseer.ContainerStarted{Container: overseer.Container{ID: "a1", Name: "clawker.p.a", Purpose: "agent", Project: "p", Agent: "a"}, At: at},
		&overseer.ContainerStarted{Container: overseer.Container{ID: "z9", Name: "clawker.p.z", Purpose: "agent", Project: "p", Agent: "z"}, At: at},
	}})
	// The seeds are forwarded too; the feeder adds only the difference.
	r.waitEvents(t, "started a1", "started z9", "destroyed z9 (r)")
	testkit.WaitForSeen(t, 5*time.Second, "the registry delete of z9", func() (bool, string) {
		got := r.reg.all()
		return slices.Equal(got, []string{"z9"}), fmt.Sprint(got)
	})
	st := r.state(t)
	if len(st.Containers) != 1 || !st.Containers[0].Since.Equal(at) {
		t.Errorf("worldview %+v: want a1 alone, unchanged since %s", st.Containers, at)
	}
}

// Resync republishes every known container (the overseer restarted empty).
func TestResync(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	d.set("a1", "clawker.p.a", container.StateRunning, agentLabels("p", "a"))
	d.set("b2", "clawker.p.b", container.StateExited, agentLabels("p", "b"))
	d.exitCodes["b2"] = 1
	r := startRig(t, d, rigOpts{})
	r.waitEvents(t, "started a1 (r)", "stopped b2 1 (r)")
	r.sys.Root.Send(r.feeder, &dockerfeed.Resync{})
	r.waitEvents(t, "started a1 (r)", "stopped b2 1 (r)", "started a1 (r)", "stopped b2 1 (r)")
}

// Events that happened before the listing but reach the actor after it are
// already accounted for: a start-then-die seen late does not flap the
// worldview.
func TestLateOldEventsDropped(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	d.set("a1", "clawker.p.a", container.StateExited, agentLabels("p", "a"))
	d.exitCodes["a1"] = 0
	r := startRig(t, d, rigOpts{})
	r.waitEvents(t, "stopped a1 0 (r)")
	s := r.waitSub(t, 0)
	old := time.Now().Add(-time.Second)
	s.emit(t, event(events.ActionStart, "a1", "clawker.p.a", old, agentLabels("p", "a")))
	s.emit(t, event(events.ActionDie, "a1", "clawker.p.a", old.Add(time.Millisecond), agentLabels("p", "a"), "exitCode", "0"))
	s.emit(t, event(events.ActionStart, "a1", "clawker.p.a", time.Now(), agentLabels("p", "a")))
	r.waitEvents(t, "stopped a1 0 (r)", "started a1")
}

func TestFilters(t *testing.T) {
	t.Parallel()
	f := dockerfeed.Filters()
	if !f["label"]["dev.clawker.managed=true"] || !f["type"]["container"] || len(f["type"]) != 1 {
		t.Errorf("filters %v", f)
	}
	for _, a := range []string{"create", "start", "stop", "die", "destroy", "rename"} {
		if !f["event"][a] {
			t.Errorf("filters %v lack event=%s", f, a)
		}
	}
}

// A container that died and started again while the feeder was away (a
// daemon restart brings back the ones with a restart policy) is running in
// the next listing as before, in a new cgroup: its new start is published
// whether the replay tells it (a start after a start: the die was lost) or
// only its State.StartedAt does; one that did not restart is not
// published again, nor is a replay of the start already seen.
func TestRestartWhileAwayIsPublished(t *testing.T) {
	t.Parallel()
	d := newFakeDocker()
	r, s0 := connectedRig(t, d)
	t1 := time.Now()
	for i, id := range []string{"x1", "y2", "z3"} {
		at := t1.Add(time.Duration(i) * time.Millisecond)
		d.set(id, "clawker.p."+id, container.StateRunning, agentLabels("p", id))
		d.startedAt[id] = at.Add(-time.Microsecond)
		s0.emit(t, event(events.ActionStart, id, "clawker.p."+id, at, agentLabels("p", id)))
	}
	r.waitEvents(t, "started x1", "started y2", "started z3")
	if calls := d.callLog(); slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "inspect") }) {
		t.Fatalf("calls %q: the first listing inspected a running container", calls)
	}

	// Away: x1 and y2 restart (x1's start is in the new daemon's events,
	// y2's is not); z3 runs on.
	// Both before the next listing, which a replayed event must precede.
	time.Sleep(10 * time.Millisecond)
	t2 := time.Now()
	d.startedAt["x1"] = t2.Add(-time.Microsecond)
	d.startedAt["y2"] = t2.Add(time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	d.onList = func() {
		d.onList = nil
		s1 := d.sub(1)
		s1.msgs <- event(events.ActionStart, "z3", "clawker.p.z3", t1.Add(2*time.Millisecond), agentLabels("p", "z3")) // Since is inclusive
		s1.msgs <- event(events.ActionStart, "x1", "clawker.p.x1", t2, agentLabels("p", "x1"))
	}
	s0.end(fmt.Errorf("unexpected EOF"))
	// x1 is told by its replayed start, or, when that reaches the feeder
	// after the listing (two goroutines race), by the listing: once.
	restarted := func() (bool, string) {
		got := fmt.Sprint(r.rec.all())
		return got == "[started x1 started y2 started z3 started x1 started y2 (r)]" ||
			got == "[started x1 started y2 started z3 started x1 (r) started y2 (r)]", got
	}
	testkit.WaitForSeen(t, 5*time.Second, "x1 and y2 started again", restarted)
	calls := d.callLog()
	for _, id := range []string{"x1", "y2", "z3"} {
		if !slices.Contains(calls, "inspect "+id) {
			t.Errorf("calls %q: the reconnect did not inspect %s", calls, id)
		}
	}

	// A third connection: nothing restarted, nothing published.
	r.waitSub(t, 1).end(fmt.Errorf("unexpected EOF"))
	r.waitSub(t, 2)
	testkit.WaitForSeen(t, 5*time.Second, "the third listing", func() (bool, string) {
		return len(r.logged("dockerfeed_reconnected")) == 2, ""
	})
	time.Sleep(50 * time.Millisecond) // a late replay, were there one
	if ok, got := restarted(); !ok {
		t.Fatalf("events %s after a connection with no restart", got)
	}
}
