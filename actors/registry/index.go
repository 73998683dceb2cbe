package registry

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/agentdb"
)

// The registry keeps every binding in memory, read from the file once when
// it opens and changed by every write after the write committed, so List
// is answered without sqlite. The actor is the file's only writer, so
// nothing else can change the rows behind the index's back.
//
// The index is in (project, agent name) order, the order agentdb.List and
// the AdminService promise; (project, agent name) is unique in the file, so
// a place in the order (a Cursor) names at most one binding.

// Cursor is a place in the list's order: the page after it starts with the
// first binding whose (project, agent name) sorts after it. The zero
// Cursor is before every binding (a project is never empty).
type Cursor struct{ Project, AgentName string }

// pageTokenVersion leads every encoded Cursor, so a later encoding can be
// told apart.
const pageTokenVersion = 1

// maxPageTokenLen bounds the tokens ParsePageToken decodes.
const maxPageTokenLen = 8 << 10

// ErrBadPageToken: a page token this registry did not make.
var ErrBadPageToken = errors.New("not a page token this control plane issued")

// Token encodes the cursor as an opaque page token (URL-safe base64).
func (c Cursor) Token() string {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(c.Project)+len(c.AgentName))
	b = append(b, pageTokenVersion)
	b = binary.AppendUvarint(b, uint64(len(c.Project)))
	b = append(append(b, c.Project...), c.AgentName...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParsePageToken decodes Token's answer; "" is the zero Cursor (the first
// page). Anything else it did not make fails with an error wrapping
// ErrBadPageToken that says how.
func ParsePageToken(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	if len(s) > maxPageTokenLen {
		return Cursor{}, fmt.Errorf("%w: %d characters, more than any it makes", ErrBadPageToken, len(s))
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, fmt.Errorf("%w: not URL-safe base64 (%v)", ErrBadPageToken, err)
	}
	if len(b) == 0 || b[0] != pageTokenVersion {
		return Cursor{}, fmt.Errorf("%w: unknown version", ErrBadPageToken)
	}
	n, used := binary.Uvarint(b[1:])
	rest := b[1:]
	if used <= 0 || n > uint64(len(rest)-used) {
		return Cursor{}, fmt.Errorf("%w: truncated", ErrBadPageToken)
	}
	rest = rest[used:]
	c := Cursor{Project: string(rest[:n]), AgentName: string(rest[n:])}
	if c.Project == "" || c.AgentName == "" {
		return Cursor{}, fmt.Errorf("%w: empty project or agent name", ErrBadPageToken)
	}
	return c, nil
}

// index is the bindings in memory. Entries are never changed in place: a
// change replaces the pointer, so a copy taken under mu stays whole.
type index struct {
	// writes is held across each database write and its index update, so
	// the index takes the writes in the order they committed (a later
	// Register of a name must not be overtaken by the one it replaced).
	// The file has one writer connection: this queues nothing sqlite
	// would not have queued anyway.
	writes sync.Mutex

	mu          sync.RWMutex
	sorted      []*agentdb.Agent // by (Project, AgentName)
	byKey       map[string]*agentdb.Agent
	byContainer map[string]*agentdb.Agent
}

func newIndex(all []agentdb.Agent) *index {
	x := &index{
		sorted:      make([]*agentdb.Agent, 0, len(all)),
		byKey:       make(map[string]*agentdb.Agent, len(all)),
		byContainer: make(map[string]*agentdb.Agent, len(all)),
	}
	for i := range all {
		a := &all[i]
		x.sorted = append(x.sorted, a)
		x.byKey[a.Key] = a
		x.byContainer[a.ContainerID] = a
	}
	slices.SortFunc(x.sorted, func(a, b *agentdb.Agent) int { return compare(a.Project, a.AgentName, b.Project, b.AgentName) })
	return x
}

// loadIndex reads every binding of db into a new index.
func loadIndex(ctx context.Context, db *agentdb.DB) (*index, error) {
	all, err := db.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the bindings into memory: %w", err)
	}
	return newIndex(all), nil
}

func compare(p1, n1, p2, n2 string) int {
	if c := strings.Compare(p1, p2); c != 0 {
		return c
	}
	return strings.Compare(n1, n2)
}

// search returns where (project, name) is or would be in sorted.
func (x *index) search(project, name string) (int, bool) {
	return slices.BinarySearchFunc(x.sorted, Cursor{project, name}, func(a *agentdb.Agent, c Cursor) int {
		return compare(a.Project, a.AgentName, c.Project, c.AgentName)
	})
}

// list answers a List from memory.
func (x *index) list(m *List) *ListResult {
	x.mu.RLock()
	defer x.mu.RUnlock()
	start := 0
	if m.After != (Cursor{}) {
		i, found := x.search(m.After.Project, m.After.AgentName)
		if found {
			i++
		}
		start = i
	}
	end := len(x.sorted)
	if m.Limit > 0 && end-start > m.Limit {
		end = start + m.Limit
	}
	out := make([]agentdb.Agent, end-start)
	for i, a := range x.sorted[start:end] {
		out[i] = *a
	}
	return &ListResult{Agents: out, More: end < len(x.sorted), Total: len(x.sorted)}
}

// put records a binding a committed write left in the file. Whatever row
// it shares a key, a container id or a (project, agent name) with is gone
// from the file (each is unique there), so it is gone from here too: the
// row a new container's Register replaced, for one.
func (x *index) put(a agentdb.Agent) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.byKey[a.Key]; old != nil {
		x.drop(old)
	}
	if old := x.byContainer[a.ContainerID]; old != nil {
		x.drop(old)
	}
	i, found := x.search(a.Project, a.AgentName)
	if found {
		x.drop(x.sorted[i])
	}
	e := &a
	x.sorted = slices.Insert(x.sorted, i, e)
	x.byKey[e.Key] = e
	x.byContainer[e.ContainerID] = e
}

// removeContainer records a committed DeleteByContainer.
func (x *index) removeContainer(containerID string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.byContainer[containerID]; old != nil {
		x.drop(old)
	}
}

// touch records a committed TouchLastSeen: as there, last_seen only moves
// forward, and unknown keys and times out of range are skipped.
func (x *index) touch(seen map[string]time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for key, t := range seen {
		old := x.byKey[key]
		if old == nil || !t.After(time.Unix(0, 0)) || !t.Before(time.Unix(0, 1<<63-1)) || t.UnixNano() <= old.LastSeen.UnixNano() {
			continue
		}
		e := *old
		e.LastSeen = time.Unix(0, t.UnixNano()).UTC()
		x.replace(old, &e)
	}
}

// drop removes e, which is in the index. mu is held.
func (x *index) drop(e *agentdb.Agent) {
	if i, found := x.search(e.Project, e.AgentName); found && x.sorted[i] == e {
		x.sorted = slices.Delete(x.sorted, i, i+1)
	}
	if x.byKey[e.Key] == e {
		delete(x.byKey, e.Key)
	}
	if x.byContainer[e.ContainerID] == e {
		delete(x.byContainer, e.ContainerID)
	}
}

// replace puts e where old is; both have the same key, container and
// name. mu is held.
func (x *index) replace(old, e *agentdb.Agent) {
	if i, found := x.search(old.Project, old.AgentName); found && x.sorted[i] == old {
		x.sorted[i] = e
	}
	x.byKey[e.Key] = e
	x.byContainer[e.ContainerID] = e
}

// committed records in the index what a write request's successful answer
// says the file now holds.
func (x *index) committed(req, res any) {
	switch r := res.(type) {
	case *RegisterResult:
		if r.Err == nil {
			x.put(r.Agent)
		}
	case *DeleteResult:
		if d, ok := req.(*DeleteContainer); ok && r.Err == nil && r.Removed > 0 {
			x.removeContainer(d.ContainerID)
		}
	}
}

// asyncWrite is async for a request that writes the file: the write and
// the index update run under index.writes, and the requester hears the
// answer after the index holds it, so a List after an acknowledged write
// sees it and one after a failed write does not.
func (a *Actor) asyncWrite(ctx actor.Context, req any, op func(context.Context) any) {
	a.async(ctx, func(c context.Context) any {
		x := a.idx
		x.writes.Lock()
		defer x.writes.Unlock()
		res := op(c)
		x.committed(req, res)
		return res
	})
}

// list answers a List from the index, holding it while the file opens.
func (a *Actor) list(ctx actor.Context, m *List) {
	sender, sys := ctx.Sender(), ctx.ActorSystem()
	answer := func() {
		if sender != nil {
			sys.Root.Send(sender, a.idx.list(m))
		}
	}
	switch {
	case a.opening != nil:
		a.held = append(a.held, answer)
	case a.idx != nil:
		answer()
	}
	// Not open: the requester's timeout reports it, as for every request.
}

// touchLastSeen writes a flush's batch and, once it committed, records it.
func (a *Actor) touchLastSeen(c context.Context, batch map[string]time.Time) error {
	x := a.idx
	x.writes.Lock()
	defer x.writes.Unlock()
	if err := a.db.TouchLastSeen(c, batch); err != nil {
		return err
	}
	x.touch(batch)
	return nil
}

// ListPage reads one page of bindings (see List), from memory.
func (c Client) ListPage(ctx context.Context, m List) (*ListResult, error) {
	return request.Ask[*ListResult](ctx, c.t, &m)
}
