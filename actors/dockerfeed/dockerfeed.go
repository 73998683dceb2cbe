// Package dockerfeed projects the Docker event stream onto the overseer: it
// turns the lifecycle of every container labelled dev.clawker.managed=true
// into typed, past-tense events (overseer.ContainerStarted, ...Stopped,
// ...Destroyed, ...Renamed) and tells the registry to forget an agent
// container once Docker destroyed it.
//
// # Never losing a transition
//
// Each connection to the daemon runs three steps, off the mailbox:
//
//  1. subscribe to the event stream (container events of managed
//     containers; Since = the time of the last event seen, on a reconnect);
//  2. list the managed containers (inspecting the stopped ones for their
//     exit code);
//  3. reconcile: compare the listing with what the feeder knew and publish a
//     synthetic transition (Reconciled: true) for every difference.
//
// Subscribing before listing means nothing that happens during the listing
// is lost; the stream is drained into the actor's mailbox from the first
// event on (a stream nobody reads makes the daemon drop events), and the
// actor holds events back until the listing arrives. It then applies, in
// order: the events older than the listing (real history, e.g. what Since
// replayed), the reconcile, and the events younger than the listing. An
// event older than the listing that arrives after it is dropped: the
// listing already accounts for it. Every event is applied against the
// feeder's own table, so a transition is published once even when the
// stream and the listing both report it. Event and listing times are
// compared directly, which assumes the daemon shares the CP's clock (a local
// socket).
//
// When the stream ends (the daemon restarted, the socket went away) the
// feeder reconnects with capped exponential backoff and jitter, with Since =
// the last event's time, and lists and reconciles again: whatever the event
// stream cannot replay (a restarted daemon keeps no events from before its
// restart) the listing catches.
//
// A container the feeder knew running may have died and started again
// while it was away (a daemon restart brings back the ones with a restart
// policy): it is running in the listing as before, but in a new cgroup that
// nothing enforces yet. Two things catch that, each publishing the new
// ContainerStarted (which the firewall answers with an Enforce, and the
// eBPF owner retires the old cgroup for the new one): a start event for a
// container known running from an earlier connection (its die was lost:
// one stream never tells a start after a start), and, on a reconnect, an
// inspect of every container known running whose State.StartedAt is later
// than what the feeder knew of its start. The first listing of a feeder
// inspects no running container: it has nothing to compare.
//
// # Degrading
//
// The feeder always reports Ready, Docker or not: the CP runs without Docker
// (on a host, in tests). An unreachable daemon is logged as
// event=dockerfeed_unavailable and retried in the background.
//
// Every Docker call is bounded by Config.CallTimeout; the subscription's
// own set-up is too (the stream itself then runs until it ends).
package dockerfeed

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"
	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/actors/overseer"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/dockerx"
)

// Docker is the part of the Docker API client the feeder uses;
// *client.Client implements it.
type Docker interface {
	Events(ctx context.Context, options client.EventsListOptions) client.EventsResult
	ContainerList(ctx context.Context, options client.ContainerListOptions) (client.ContainerListResult, error)
	ContainerInspect(ctx context.Context, containerID string, options client.ContainerInspectOptions) (client.ContainerInspectResult, error)
}

// Config wires the feeder.
type Config struct {
	// Docker is the client to use. When nil the feeder builds one for Host
	// when it starts, and closes it when it stops.
	Docker Docker
	// Host is the daemon's address when Docker is nil; "" means DOCKER_HOST,
	// else unix:///var/run/docker.sock.
	Host     string
	Overseer *actor.PID
	Registry *actor.PID
	Log      *zap.Logger

	// CallTimeout bounds each Docker call (default 10s).
	CallTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between reconnect attempts
	// (defaults 200ms and 10s); the wait doubles per failed attempt, with
	// jitter.
	BackoffMin, BackoffMax time.Duration
	// RequestTimeout bounds requests to the overseer and the registry
	// (default 5s).
	RequestTimeout time.Duration
}

func (c *Config) defaults() {
	if c.CallTimeout <= 0 {
		c.CallTimeout = 10 * time.Second
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 200 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 10 * time.Second
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
}

// Resync asks the feeder to publish every container it knows again, as
// reconciled Started/Stopped events: the wiring sends it when the overseer
// restarted with an empty worldview.
type Resync struct{}

// Container actions the feeder subscribes to.
var actions = []events.Action{
	events.ActionCreate, events.ActionStart, events.ActionStop,
	events.ActionDie, events.ActionDestroy, events.ActionRename,
}

// Filters is the event stream's filter: container events of managed
// containers, for the actions the feeder folds.
func Filters() client.Filters {
	f := dockerx.ManagedFilter().Add("type", string(events.ContainerEventType))
	for _, a := range actions {
		f.Add("event", string(a))
	}
	return f
}

// Internal messages, from the connection goroutines and timers.
type (
	// seeded carries the overseer's worldview, asked for at start.
	seeded struct {
		state *overseer.State
		err   error
	}
	streamEvent struct {
		gen uint64
		msg events.Message
	}
	streamEnded struct {
		gen uint64
		err error
	}
	listed struct {
		gen   uint64
		at    time.Time // when the listing began
		items []listedContainer
		err   error
	}
	retry struct{ token uint64 }
)

type listedContainer struct {
	c        overseer.Container
	state    runState
	exitCode int
	started  time.Time // State.StartedAt, for the running ones list was asked to inspect
}

type runState int

const (
	stateCreated runState = iota // exists, never started: not in the worldview
	stateRunning
	stateStopped
)

// known is the feeder's record of a container.
type known struct {
	gen   uint64 // the connection that last told of it (0: the overseer's seed)
	c     overseer.Container
	state runState
	exit  int
	since time.Time
	// started is the container's State.StartedAt when an inspect told it
	// (zero otherwise; since, an event's time, is then later than it).
	started time.Time
}

// restartedSince reports whether a container listed running with
// State.StartedAt started was started again after what k knew of it.
func (k *known) restartedSince(started time.Time) bool {
	switch {
	case started.IsZero():
		return false
	case !k.started.IsZero():
		return started.After(k.started)
	default:
		return started.After(k.since)
	}
}

// gens numbers connection attempts process-wide, so a message from an
// attempt of a previous incarnation of the actor is never mistaken for one
// of the current attempt.
var gens atomic.Uint64

// Actor is the Docker events feeder.
type Actor struct {
	cfg    Config
	docker Docker
	owned  *client.Client // the client the actor built, closed on stop

	known map[string]*known

	// The current connection attempt; gen is 0 between attempts.
	gen      uint64
	cancel   context.CancelFunc
	subSince string    // the current attempt's Since
	listAt   time.Time // when the current attempt's listing began
	listed   bool      // the current attempt's listing was reconciled
	pending  []events.Message

	lastEvent   int64 // TimeNano of the newest event accounted for: the next Since
	connectedAt time.Time
	everUp      bool
	attempt     int // failed attempts since the last success
	downSince   time.Time
	retryToken  uint64
	retryTimer  *time.Timer
}

// New returns a producer of fresh feeders.
func New(cfg Config) actor.Producer {
	cfg.defaults()
	return func() actor.Actor {
		return &Actor{cfg: cfg, known: map[string]*known{}}
	}
}

// Receive handles the feeder's messages.
func (a *Actor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.start(ctx)
	case *actor.Stopping, *actor.Restarting:
		a.stop()
	case *seeded:
		a.seed(m)
		a.connect(ctx)
	case *streamEvent:
		a.onEvent(ctx, m)
	case *listed:
		a.onListed(ctx, m)
	case *streamEnded:
		if m.gen == a.gen && a.gen != 0 {
			a.fail(ctx, m.err, a.listed)
		}
	case *retry:
		if m.token == a.retryToken && a.gen == 0 {
			a.connect(ctx)
		}
	case *Resync:
		a.resync(ctx)
	}
}

func (a *Actor) start(ctx actor.Context) {
	// Ready at once: Docker being away must not hold up (or fail) the CP.
	supervise.ReportReady(ctx, nil)
	a.docker = a.cfg.Docker
	if a.docker == nil {
		c, err := dockerx.New(a.cfg.Host)
		if err != nil {
			// A malformed address does not heal by retrying.
			a.cfg.Log.Error("docker events feed unavailable", zap.String("event", "dockerfeed_unavailable"),
				zap.String("host", a.cfg.Host), zap.Error(err))
			return
		}
		a.owned, a.docker = c, c
	}
	// Start from what the overseer already knows (it outlives a restart of
	// the feeder), so containers destroyed meanwhile are reconciled away.
	if a.cfg.Overseer == nil {
		ctx.Send(ctx.Self(), &seeded{})
		return
	}
	request.Reenter(ctx, a.cfg.Overseer, &overseer.GetState{}, a.cfg.RequestTimeout, func(s *overseer.State, err error) {
		a.seed(&seeded{state: s, err: err})
		a.connect(ctx)
	})
}

func (a *Actor) seed(m *seeded) {
	if m.err != nil {
		a.cfg.Log.Warn("could not read the overseer's worldview; starting from an empty one",
			zap.String("event", "dockerfeed_seed_failed"), zap.Error(m.err))
		return
	}
	if m.state == nil {
		return
	}
	for _, v := range m.state.Containers {
		st := stateStopped
		if v.State == cpapi.ContainerRunning {
			st = stateRunning
		}
		a.known[v.ID] = &known{
			c:     overseer.Container{ID: v.ID, Name: v.Name, Purpose: v.Purpose, Project: v.Project, Agent: v.Agent},
			state: st, exit: v.ExitCode, since: v.Since,
		}
	}
}

func (a *Actor) stop() {
	a.retryToken++
	if a.retryTimer != nil {
		a.retryTimer.Stop()
		a.retryTimer = nil
	}
	if a.cancel != nil {
		a.cancel()
		a.cancel = nil
	}
	a.gen = 0
	if a.owned != nil {
		_ = a.owned.Close()
		a.owned = nil
	}
	a.docker = nil
}

// since is the Since parameter of the next subscription: the newest event
// seen, or, without one, the start of the last successful listing. Empty on
// the first connection: the listing covers everything before it.
func (a *Actor) since() string {
	switch {
	case a.lastEvent > 0:
		return formatSince(a.lastEvent)
	case !a.connectedAt.IsZero():
		return formatSince(a.connectedAt.UnixNano())
	}
	return ""
}

func formatSince(nano int64) string {
	return fmt.Sprintf("%d.%09d", nano/int64(time.Second), nano%int64(time.Second))
}

// connect starts a connection attempt: subscribe, then list, in a goroutine
// that reports back by message.
func (a *Actor) connect(ctx actor.Context) {
	if a.docker == nil || a.gen != 0 {
		return
	}
	a.gen = gens.Add(1)
	a.listed, a.pending, a.listAt = false, nil, time.Time{}
	c, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.subSince = a.since()
	gen, docker, timeout, since := a.gen, a.docker, a.cfg.CallTimeout, a.subSince
	running := map[string]bool{}
	for id, k := range a.known {
		if k.state == stateRunning {
			running[id] = true
		}
	}
	sys, self := ctx.ActorSystem(), ctx.Self()
	send := func(m any) {
		if c.Err() == nil {
			sys.Root.Send(self, m)
		}
	}
	go func() {
		res, err := subscribe(c, docker, since, timeout)
		if err != nil {
			send(&streamEnded{gen: gen, err: err})
			return
		}
		go pump(c, gen, res, send)
		l := list(c, docker, timeout, running)
		l.gen = gen
		send(l)
	}()
}

// subscribe opens the event stream; its set-up (up to the response headers)
// is bounded by timeout.
func subscribe(c context.Context, docker Docker, since string, timeout time.Duration) (client.EventsResult, error) {
	opened := make(chan client.EventsResult, 1)
	go func() { opened <- docker.Events(c, client.EventsListOptions{Since: since, Filters: Filters()}) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case res := <-opened:
		// A failed request reports its error right after returning.
		select {
		case err := <-res.Err:
			if err == nil {
				err = io.EOF
			}
			return client.EventsResult{}, fmt.Errorf("subscribing to events: %w", err)
		default:
		}
		return res, nil
	case <-t.C:
		return client.EventsResult{}, fmt.Errorf("subscribing to events: %w after %s", dockerx.ErrTimeout, timeout)
	}
}

// pump forwards every event to the actor as soon as it arrives, so the
// daemon never sees an undrained stream.
func pump(c context.Context, gen uint64, res client.EventsResult, send func(any)) {
	for {
		select {
		case m, ok := <-res.Messages:
			if !ok {
				send(&streamEnded{gen: gen, err: io.EOF})
				return
			}
			send(&streamEvent{gen: gen, msg: m})
		case err, ok := <-res.Err:
			if !ok || err == nil {
				err = io.EOF
			}
			send(&streamEnded{gen: gen, err: err})
			return
		case <-c.Done():
			return
		}
	}
}

// list lists the managed containers and inspects the stopped ones for their
// exit code, and the running ones in known (the ones the feeder knew
// running) for their start time. A failed inspect leaves the exit code
// unknown and the start time zero (the container may be gone already; the
// stream will say).
func list(c context.Context, docker Docker, timeout time.Duration, known map[string]bool) *listed {
	out := &listed{at: time.Now()}
	res, err := dockerx.Call(c, timeout, func(c context.Context) (client.ContainerListResult, error) {
		return docker.ContainerList(c, client.ContainerListOptions{All: true, Filters: dockerx.ManagedFilter()})
	})
	if err != nil {
		out.err = fmt.Errorf("listing containers: %w", err)
		return out
	}
	// state inspects one container; nil when the inspect failed.
	state := func(id string) *container.State {
		ins, err := dockerx.Call(c, timeout, func(c context.Context) (client.ContainerInspectResult, error) {
			return docker.ContainerInspect(c, id, client.ContainerInspectOptions{})
		})
		if err != nil {
			return nil
		}
		return ins.Container.State
	}
	for _, s := range res.Items {
		lc := listedContainer{c: meta(s.ID, containerName(s.Names), s.Labels), exitCode: cpapi.ExitCodeUnknown}
		switch s.State {
		case container.StateRunning, container.StatePaused, container.StateRestarting:
			lc.state = stateRunning
			if !known[s.ID] {
				break
			}
			if st := state(s.ID); st != nil {
				lc.started, _ = time.Parse(time.RFC3339Nano, st.StartedAt)
			}
		case container.StateCreated:
			lc.state = stateCreated
		default: // exited, dead, removing
			lc.state = stateStopped
			if st := state(s.ID); st != nil {
				lc.exitCode = st.ExitCode
			}
		}
		out.items = append(out.items, lc)
	}
	return out
}

// containerName picks the container's own name from a listing's names
// (which also hold link aliases such as /other/alias).
func containerName(names []string) string {
	for _, n := range names {
		if n = strings.TrimPrefix(n, "/"); !strings.Contains(n, "/") {
			return n
		}
	}
	if len(names) > 0 {
		return strings.TrimPrefix(names[0], "/")
	}
	return ""
}

func meta(id, name string, labels map[string]string) overseer.Container {
	return overseer.Container{
		ID: id, Name: name,
		Purpose: labels[dockerx.LabelPurpose], Project: labels[dockerx.LabelProject], Agent: labels[dockerx.LabelAgent],
	}
}

func eventTime(m events.Message) time.Time {
	if m.TimeNano != 0 {
		return time.Unix(0, m.TimeNano)
	}
	return time.Unix(m.Time, 0)
}

func (a *Actor) onEvent(ctx actor.Context, m *streamEvent) {
	if m.gen != a.gen || a.gen == 0 {
		return
	}
	if !a.listed {
		// Held until the listing; it counts as seen (for Since) only once
		// the listing succeeded.
		a.pending = append(a.pending, m.msg)
		return
	}
	at := eventTime(m.msg)
	a.seen(at)
	if at.Before(a.listAt) {
		return // the listing accounts for it already
	}
	a.apply(ctx, m.msg)
}

// seen notes the time of an event accounted for, the Since of a reconnect.
func (a *Actor) seen(at time.Time) {
	if n := at.UnixNano(); n > a.lastEvent {
		a.lastEvent = n
	}
}

func (a *Actor) onListed(ctx actor.Context, m *listed) {
	if m.gen != a.gen || a.gen == 0 {
		return
	}
	if m.err != nil {
		a.fail(ctx, m.err, false)
		return
	}
	a.listAt = m.at
	pending := a.pending
	a.pending = nil
	sort.SliceStable(pending, func(i, j int) bool { return eventTime(pending[i]).Before(eventTime(pending[j])) })
	i := 0
	for ; i < len(pending) && eventTime(pending[i]).Before(m.at); i++ {
		a.apply(ctx, pending[i])
	}
	replayed := i
	reconciled := a.reconcile(ctx, m)
	for ; i < len(pending); i++ {
		a.apply(ctx, pending[i])
	}
	for _, e := range pending {
		a.seen(eventTime(e))
	}
	a.listed = true

	since := a.sinceLogged()
	fields := []zap.Field{zap.Int("containers", len(m.items)), zap.Int("reconciled", reconciled), zap.Int("replayed", replayed)}
	if v, ok := a.docker.(interface{ ClientVersion() string }); ok {
		fields = append(fields, zap.String("api_version", v.ClientVersion()))
	}
	if a.everUp {
		fields = append(fields, zap.String("since", since), zap.Int("attempts", a.attempt+1),
			zap.Float64("down_ms", float64(time.Since(a.downSince).Microseconds())/1000))
		a.cfg.Log.Info("docker events feed reconnected", append([]zap.Field{zap.String("event", "dockerfeed_reconnected")}, fields...)...)
	} else {
		fields = append(fields, zap.String("since", since))
		a.cfg.Log.Info("docker events feed connected", append([]zap.Field{zap.String("event", "dockerfeed_connected")}, fields...)...)
	}
	a.everUp = true
	a.attempt = 0
	a.connectedAt = m.at
}

// sinceLogged renders the Since of the current subscription for the log: the
// time it asked to replay from, RFC 3339, or "" for none.
func (a *Actor) sinceLogged() string {
	if a.subSince == "" {
		return ""
	}
	sec, frac, _ := strings.Cut(a.subSince, ".")
	s, err1 := strconv.ParseInt(sec, 10, 64)
	n, err2 := strconv.ParseInt(frac, 10, 64)
	if err1 != nil || err2 != nil {
		return a.subSince
	}
	return time.Unix(s, n).UTC().Format(time.RFC3339Nano)
}

// fail ends the current attempt and schedules the next one.
func (a *Actor) fail(ctx actor.Context, err error, wasUp bool) {
	if a.cancel != nil {
		a.cancel()
		a.cancel = nil
	}
	a.gen, a.listed, a.pending = 0, false, nil
	if wasUp || a.attempt == 0 {
		a.downSince = time.Now()
	}
	a.attempt++
	delay := backoff(a.attempt, a.cfg.BackoffMin, a.cfg.BackoffMax)
	if wasUp {
		a.cfg.Log.Warn("docker events stream ended; reconnecting", zap.String("event", "dockerfeed_disconnected"),
			zap.Error(err), zap.Float64("retry_in_ms", cpapi.Millis(delay)))
	} else if a.attempt <= 3 || a.attempt%10 == 0 {
		// Logged for the first attempts, then every tenth: a host without
		// Docker would otherwise fill the log.
		a.cfg.Log.Warn("docker events feed unavailable; retrying", zap.String("event", "dockerfeed_unavailable"),
			zap.Error(err), zap.Int("attempt", a.attempt), zap.Float64("retry_in_ms", cpapi.Millis(delay)))
	}
	a.retryToken++
	token, sys, self := a.retryToken, ctx.ActorSystem(), ctx.Self()
	if a.retryTimer != nil {
		a.retryTimer.Stop()
	}
	a.retryTimer = time.AfterFunc(delay, func() { sys.Root.Send(self, &retry{token: token}) })
}

// backoff is the wait before attempt n (1-based): min doubled per attempt,
// capped at max, then drawn uniformly from its upper half so that many
// feeders do not retry in step.
func backoff(n int, min, max time.Duration) time.Duration {
	d := min
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	return half + rand.N(half+1)
}

// apply folds one event into the feeder's table and publishes the
// transition it makes, if any.
func (a *Actor) apply(ctx actor.Context, m events.Message) {
	if m.Type != "" && m.Type != events.ContainerEventType {
		return
	}
	id, attrs, at := m.Actor.ID, m.Actor.Attributes, eventTime(m)
	if id == "" {
		return
	}
	k, ok := a.known[id]
	c := meta(id, attrs["name"], attrs)
	if ok {
		if c.Name == "" {
			c.Name = k.c.Name
		}
		if c.Purpose == "" && c.Project == "" && c.Agent == "" {
			c.Purpose, c.Project, c.Agent = k.c.Purpose, k.c.Project, k.c.Agent
		}
	}
	switch m.Action {
	case events.ActionCreate:
		if !ok {
			a.known[id] = &known{gen: a.gen, c: c, state: stateCreated, exit: cpapi.ExitCodeUnknown, since: at}
		}
	case events.ActionStart:
		if ok && k.state == stateRunning {
			if !at.After(k.since) {
				return // replayed (Since is inclusive)
			}
			if k.gen == a.gen {
				// Known running from this connection (its stream or its
				// listing, which a start can follow by a moment): one
				// stream tells a stop before the next start. Noted, so
				// the next connection's replay of it is not news.
				k.since = at
				return
			}
			// Started again though the feeder never saw it stop: its die
			// was lost with the previous connection (the daemon
			// restarted). A new cgroup to enforce.
			a.known[id] = &known{gen: a.gen, c: c, state: stateRunning, exit: cpapi.ExitCodeUnknown, since: at}
			a.publish(ctx, &overseer.ContainerStarted{Container: c, At: at})
			return
		}
		a.known[id] = &known{gen: a.gen, c: c, state: stateRunning, exit: cpapi.ExitCodeUnknown, since: at}
		a.publish(ctx, &overseer.ContainerStarted{Container: c, At: at})
	case events.ActionDie, events.ActionStop:
		exit := cpapi.ExitCodeUnknown
		if v, err := strconv.Atoi(attrs["exitCode"]); err == nil {
			exit = v
		}
		if ok && k.state == stateStopped {
			// die then stop: one transition. A later event may still
			// tell an exit code the first did not.
			if k.exit != cpapi.ExitCodeUnknown || exit == cpapi.ExitCodeUnknown {
				return
			}
		}
		a.known[id] = &known{gen: a.gen, c: c, state: stateStopped, exit: exit, since: at}
		a.publish(ctx, &overseer.ContainerStopped{Container: c, ExitCode: exit, At: at})
	case events.ActionDestroy:
		delete(a.known, id)
		if ok && k.state != stateCreated {
			a.publish(ctx, &overseer.ContainerDestroyed{Container: c, At: at})
		}
		a.forget(ctx, c)
	case events.ActionRename:
		if !ok || c.Name == "" || c.Name == k.c.Name {
			return
		}
		old := strings.TrimPrefix(attrs["oldName"], "/")
		if old == "" {
			old = k.c.Name
		}
		k.c = c
		if k.state != stateCreated {
			a.publish(ctx, &overseer.ContainerRenamed{Container: c, OldName: old, At: at})
		}
	}
}

// reconcile compares a listing with the table and publishes a reconciled
// transition for each difference. It returns how many it published.
func (a *Actor) reconcile(ctx actor.Context, l *listed) int {
	n := 0
	pub := func(ev any) {
		a.publish(ctx, ev)
		n++
	}
	seen := make(map[string]bool, len(l.items))
	for _, lc := range l.items {
		c := lc.c
		seen[c.ID] = true
		k, ok := a.known[c.ID]
		if ok && k.c.Name != c.Name && k.state != stateCreated {
			pub(&overseer.ContainerRenamed{Container: c, OldName: k.c.Name, At: l.at, Reconciled: true})
		}
		if ok {
			k.c = c
		}
		switch lc.state {
		case stateRunning:
			if ok && k.state == stateRunning && !k.restartedSince(lc.started) {
				k.gen = a.gen
				if k.started.IsZero() {
					k.started = lc.started
				}
				continue
			}
			a.known[c.ID] = &known{gen: a.gen, c: c, state: stateRunning, exit: cpapi.ExitCodeUnknown, since: l.at, started: lc.started}
			pub(&overseer.ContainerStarted{Container: c, At: l.at, Reconciled: true})
		case stateCreated:
			if !ok {
				a.known[c.ID] = &known{gen: a.gen, c: c, state: stateCreated, exit: cpapi.ExitCodeUnknown, since: l.at}
			}
		case stateStopped:
			if ok && k.state == stateStopped && (k.exit == lc.exitCode || lc.exitCode == cpapi.ExitCodeUnknown) {
				continue
			}
			a.known[c.ID] = &known{gen: a.gen, c: c, state: stateStopped, exit: lc.exitCode, since: l.at}
			pub(&overseer.ContainerStopped{Container: c, ExitCode: lc.exitCode, At: l.at, Reconciled: true})
		}
	}
	gone := make([]string, 0)
	for id := range a.known {
		if !seen[id] {
			gone = append(gone, id)
		}
	}
	sort.Strings(gone)
	for _, id := range gone {
		k := a.known[id]
		delete(a.known, id)
		if k.state != stateCreated {
			pub(&overseer.ContainerDestroyed{Container: k.c, At: l.at, Reconciled: true})
		}
		a.forget(ctx, k.c)
	}
	return n
}

// resync publishes the whole table again (the overseer restarted empty).
func (a *Actor) resync(ctx actor.Context) {
	ids := make([]string, 0, len(a.known))
	for id := range a.known {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		k := a.known[id]
		switch k.state {
		case stateRunning:
			a.publish(ctx, &overseer.ContainerStarted{Container: k.c, At: k.since, Reconciled: true})
		case stateStopped:
			a.publish(ctx, &overseer.ContainerStopped{Container: k.c, ExitCode: k.exit, At: k.since, Reconciled: true})
		}
	}
	a.cfg.Log.Info("republished the containers to the overseer", zap.String("event", "dockerfeed_resync"), zap.Int("containers", len(ids)))
}

func (a *Actor) publish(ctx actor.Context, ev any) {
	if a.cfg.Overseer != nil {
		ctx.Send(a.cfg.Overseer, &overseer.Publish{Event: ev})
	}
}

// forget tells the registry to drop the row of a destroyed agent container.
// Deleting is idempotent, so a destroy seen twice costs one more no-op.
func (a *Actor) forget(ctx actor.Context, c overseer.Container) {
	if c.Purpose != dockerx.PurposeAgent || a.cfg.Registry == nil {
		return
	}
	log := a.cfg.Log
	request.Reenter(ctx, a.cfg.Registry, &registry.DeleteContainer{ContainerID: c.ID}, a.cfg.RequestTimeout, func(r *registry.DeleteResult, err error) {
		if err == nil {
			err = r.Err
		}
		if err != nil {
			log.Warn("could not remove a destroyed agent container from the registry", zap.String("event", "dockerfeed_registry_delete_failed"),
				zap.String("container_id", c.ID), zap.String("name", c.Name), zap.Error(err))
			return
		}
		log.Info("destroyed agent container removed from the registry", zap.String("event", "dockerfeed_registry_delete"),
			zap.String("container_id", c.ID), zap.String("name", c.Name), zap.Int("removed", r.Removed))
	})
}
