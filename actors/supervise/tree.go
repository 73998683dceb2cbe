// Package supervise holds what every actor of the control plane shares: the
// introspection tree behind /debug/actors, the props builder that wires each
// actor into it, the lifecycle messages of start-up and of the ordered drain,
// and the debug faults used by tests.
package supervise

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Tree is a concurrent-safe mirror of the live actor tree. Actors never send it
// messages: a receiver middleware and a mailbox middleware update it as a side
// effect of message processing. That is deliberate: /debug/actors must answer
// even when an actor is wedged, which is exactly when someone looks at it, so
// it cannot depend on asking the actors themselves.
type Tree struct {
	mu    sync.Mutex
	nodes map[string]*node // by PID id
	seq   uint64
	now   func() time.Time
}

// NewTree returns an empty tree.
func NewTree() *Tree {
	return &Tree{nodes: map[string]*node{}, now: time.Now}
}

type node struct {
	name     string
	pid      *actor.PID
	parentID string
	seq      uint64   // registration order, so children list in spawn order
	steps    []string // the drain steps the actor owns (fixed at spawn)

	// Guarded by Tree.mu.
	state     cpapi.ActorState
	restarts  int
	lastError string
	startedAt time.Time

	posted   atomic.Int64
	received atomic.Int64
}

func (n *node) depth() int64 {
	d := n.posted.Load() - n.received.Load()
	if d < 0 {
		return 0
	}
	return d
}

// mailboxStats counts messages in and out of one actor's mailbox.
type mailboxStats struct{ n *node }

func (m mailboxStats) MailboxStarted()     {}
func (m mailboxStats) MessagePosted(any)   { m.n.posted.Add(1) }
func (m mailboxStats) MessageReceived(any) { m.n.received.Add(1) }
func (m mailboxStats) MailboxEmpty()       {}

// register links n to its PID the first time the actor starts; a later
// Started is a restart, which resets the uptime to the new incarnation's.
func (t *Tree) register(n *node, self, parent *actor.PID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n.pid != nil {
		n.startedAt = t.now()
		return
	}
	n.pid = self
	if parent != nil {
		n.parentID = parent.Id
	}
	n.startedAt = t.now()
	t.nodes[self.Id] = n
}

func (t *Tree) setState(n *node, s cpapi.ActorState) {
	t.mu.Lock()
	n.state = s
	t.mu.Unlock()
}

func (t *Tree) remove(n *node) {
	t.mu.Lock()
	if n.pid != nil {
		delete(t.nodes, n.pid.Id)
	}
	t.mu.Unlock()
}

// SetState records a state an actor enters on its own (draining).
func (t *Tree) SetState(pid *actor.PID, s cpapi.ActorState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n, ok := t.nodes[pid.Id]; ok {
		n.state = s
	}
}

// RecordFailure notes a supervised failure of pid: it counts as a restart when
// restarted is true.
func (t *Tree) RecordFailure(pid *actor.PID, reason any, restarted bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.nodes[pid.Id]
	if !ok {
		return
	}
	n.lastError = fmt.Sprint(reason)
	if restarted {
		n.restarts++
		n.state = cpapi.ActorRestarting
	}
}

// Restarts returns how often the actor at pid was restarted.
func (t *Tree) Restarts(pid *actor.PID) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n, ok := t.nodes[pid.Id]; ok {
		return n.restarts
	}
	return 0
}

// Lookup finds a live actor by its path (its PID id, e.g. "clawker-cp/overseer").
func (t *Tree) Lookup(path string) (*actor.PID, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.nodes[path]
	if !ok {
		return nil, false
	}
	return n.pid, true
}

// Snapshot renders the subtree rooted at rootID. It returns false when no
// such actor is alive.
func (t *Tree) Snapshot(rootID string) (cpapi.ActorNode, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	children := map[string][]*node{}
	for _, n := range t.nodes {
		children[n.parentID] = append(children[n.parentID], n)
	}
	for _, c := range children {
		sort.Slice(c, func(i, j int) bool { return c[i].seq < c[j].seq })
	}
	root, ok := t.nodes[rootID]
	if !ok {
		return cpapi.ActorNode{}, false
	}
	now := t.now()
	var render func(n *node) cpapi.ActorNode
	render = func(n *node) cpapi.ActorNode {
		out := cpapi.ActorNode{
			Name:         n.name,
			Path:         n.pid.Id,
			PID:          n.pid.String(),
			State:        n.state,
			Restarts:     n.restarts,
			LastError:    n.lastError,
			MailboxDepth: n.depth(),
			StartedAt:    n.startedAt.UTC(),
			UptimeSec:    now.Sub(n.startedAt).Seconds(),
		}
		for _, c := range children[n.pid.Id] {
			out.Children = append(out.Children, render(c))
		}
		return out
	}
	return render(root), true
}

// Names lists the paths of every live actor, sorted; handy in tests and logs.
func (t *Tree) Names() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.nodes))
	for id := range t.nodes {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// lastSegment returns the actor's own name from its PID id.
func lastSegment(id string) string {
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		return id[i+1:]
	}
	return id
}
