package grpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/actors/registry"
	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/adminclient/adminclienttest"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/agentdb/agentdbtest"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cptest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// cliRecvLimit is what a gRPC client receives at most by default, the
// CLI's limit (adminclient sets none).
const cliRecvLimit = 4 << 20

// listRig is the real grpc actor over a real registry on a sqlite file
// that held n bindings before it opened, and the CLI's client of it.
type listRig struct {
	home   *adminclienttest.Home
	admin  *adminclient.Client
	reg    registry.Client
	regPID *actor.PID
	sys    *actor.ActorSystem
}

func startListRig(t testing.TB, n int, agent func(int) agentdb.Agent) *listRig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "controlplane.db")
	agentdbtest.Fill(t, path, n, agent)
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
	regPID := sys.Root.Spawn(actor.PropsFromProducer(registry.New(registry.Config{
		Path: path, FlushInterval: time.Hour, OpTimeout: 10 * time.Second, Log: zap.NewNop(),
	})))
	t.Cleanup(func() { _ = sys.Root.StopFuture(regPID).Wait() })
	// Opening reads every binding into the index: with 100,000 under -race
	// on a loaded machine that outlasts one request's 10 s. Wait for it
	// here, so the walks time the pages, not the open.
	opened, cancelOpen := context.WithTimeout(context.Background(), 3*time.Minute)
	if _, err := registry.NewClient(sys, regPID, 3*time.Minute).List(opened); err != nil {
		cancelOpen()
		t.Fatalf("the registry did not open: %v", err)
	}
	cancelOpen()
	spawnGRPC(t, sys, cpgrpc.Config{
		BindHost:  "127.0.0.1",
		AgentPort: ports[0], AdminPort: ports[1], AuthDir: paths.CPAuthDir, Registry: regPID,
		Heartbeat: time.Second, RequestTimeout: 10 * time.Second,
		Introspector: tokens,
		Log:          zap.NewNop(),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := adminclient.Dial(ctx, paths, home.Settings(t), adminclient.WithOAuth())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &listRig{home: home, admin: c, reg: registry.NewClient(sys, regPID, 10*time.Second), regPID: regPID, sys: sys}
}

// walked is one walk of ListAgents.
type walked struct {
	agents   []*adminv1.Agent
	pages    int
	maxBytes int // the largest answer's encoded size
	totals   []uint32
}

// walk lists every agent page by page; between pages it calls between
// (when not nil) with the page number.
func (r *listRig) walk(t *testing.T, pageSize uint32, between func(page int)) walked {
	t.Helper()
	var w walked
	token := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := r.admin.ListAgents(ctx, &adminv1.ListAgentsRequest{PageSize: pageSize, PageToken: token})
		cancel()
		if err != nil {
			t.Fatalf("ListAgents page %d (token %q): %v", w.pages+1, token, err)
		}
		w.pages++
		w.agents = append(w.agents, resp.GetAgents()...)
		w.maxBytes = max(w.maxBytes, proto.Size(resp))
		w.totals = append(w.totals, resp.GetTotal())
		if token = resp.GetNextPageToken(); token == "" {
			return w
		}
		if len(resp.GetAgents()) == 0 {
			t.Fatalf("page %d lists nothing but has a next token", w.pages)
		}
		if between != nil {
			between(w.pages)
		}
	}
}

// checkOrdered fails unless agents are in strictly increasing (project,
// agent name) order: no agent twice.
func checkOrdered(t *testing.T, agents []*adminv1.Agent) {
	t.Helper()
	for i := 1; i < len(agents); i++ {
		a, b := agents[i-1], agents[i]
		if a.GetProject() > b.GetProject() || (a.GetProject() == b.GetProject() && a.GetAgentName() >= b.GetAgentName()) {
			t.Fatalf("agent %d %s/%s is not after agent %d %s/%s", i, b.GetProject(), b.GetAgentName(), i-1, a.GetProject(), a.GetAgentName())
		}
	}
}

// 100,000 agents: every one is listed once, in order, in pages of the
// default size (1000) and of the largest (5000; a larger ask is lowered to
// it), each answer received within the CLI's 4 MiB limit.
func TestListAgents100kInPages(t *testing.T) {
	const n = 100_000
	r := startListRig(t, n, agentdbtest.Synthetic)
	for _, tc := range []struct {
		ask       uint32
		wantPages int
	}{{0, n / 1000}, {5000, n / 5000}, {1 << 20, n / 5000}} {
		t.Run(fmt.Sprintf("page_size=%d", tc.ask), func(t *testing.T) {
			w := r.walk(t, tc.ask, nil)
			if len(w.agents) != n || w.pages != tc.wantPages {
				t.Fatalf("%d agents in %d pages, want %d in %d", len(w.agents), w.pages, n, tc.wantPages)
			}
			checkOrdered(t, w.agents)
			if w.maxBytes >= cliRecvLimit {
				t.Errorf("the largest page is %d bytes, not under the CLI's %d", w.maxBytes, cliRecvLimit)
			}
			for i, total := range w.totals {
				if total != n {
					t.Fatalf("page %d says total %d, want %d", i+1, total, n)
				}
			}
			want := agentdbtest.Synthetic(12345)
			for _, a := range w.agents {
				if a.GetKey() == want.Key {
					if a.GetProject() != want.Project || a.GetAgentName() != want.AgentName || a.GetContainerId() != want.ContainerID ||
						a.GetThumbprint() != want.Thumbprint || !a.GetRegisteredAt().AsTime().Equal(want.RegisteredAt) ||
						!a.GetLastSeen().AsTime().Equal(want.LastSeen) || a.GetConnected() {
						t.Errorf("listed %v, the file holds %+v (and no Session is up)", a, want)
					}
				}
			}
			t.Logf("%d pages, largest %d bytes", w.pages, w.maxBytes)
		})
	}
}

// Names long enough that 5000 agents would be ~10 MiB: the page is cut
// below the CLI's limit, and the walk still lists every agent once.
func TestListAgentsLongNamesStayUnderTheLimit(t *testing.T) {
	const n = 5000
	long := strings.Repeat("n", 2000)
	r := startListRig(t, n, func(i int) agentdb.Agent {
		a := agentdbtest.Synthetic(i)
		a.AgentName = fmt.Sprintf("%s-%06d", long, i)
		return a
	})
	w := r.walk(t, 5000, nil)
	if len(w.agents) != n || w.pages < 2 {
		t.Fatalf("%d agents in %d pages, want %d in several", len(w.agents), w.pages, n)
	}
	checkOrdered(t, w.agents)
	if w.maxBytes >= cliRecvLimit {
		t.Errorf("the largest page is %d bytes, not under the CLI's %d", w.maxBytes, cliRecvLimit)
	}
}

// Bindings registered and removed while a walk is under way, before and
// after its place in the order: every agent that existed for the whole
// walk is listed exactly once, and nothing is listed twice.
func TestListAgentsWalkDuringInserts(t *testing.T) {
	const n = 3000
	// The existing agents are the even-numbered names; the ones
	// registered meanwhile take odd numbers, so they land between
	// existing ones, before and after the walk's place.
	even := func(i int) agentdb.Agent {
		a := agentdbtest.Synthetic(2 * i)
		a.Project = "p"
		return a
	}
	r := startListRig(t, n, even)
	var inserted, removed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			a := agentdbtest.Synthetic(2*((i*7919)%n) + 1)
			a.Project = "p"
			a.Key, a.RegisteredAt, a.LastSeen = "", time.Time{}, time.Time{}
			res, err := r.reg.Register(context.Background(), registry.Register{Agent: a})
			if err != nil || res.Err != nil {
				t.Errorf("Register %s: %v %v", a.AgentName, err, res.Err)
				return
			}
			if res.Created {
				inserted.Add(1)
			}
			if i%3 == 2 {
				out, err := r.sys.Root.RequestFuture(r.regPID, &registry.DeleteContainer{ContainerID: a.ContainerID}, 10*time.Second).Result()
				if err != nil || out.(*registry.DeleteResult).Err != nil {
					t.Errorf("DeleteContainer: %v %v", err, out)
					return
				}
				removed.Add(1)
			}
		}
	}()
	// Let the writer run between pages, so each page is read after some
	// writes landed.
	w := r.walk(t, 100, func(page int) {
		start, deadline := inserted.Load(), time.Now().Add(30*time.Second)
		for inserted.Load() < start+2 {
			if time.Now().After(deadline) {
				t.Fatalf("no registration landed after page %d", page)
			}
			time.Sleep(time.Millisecond)
		}
	})
	close(stop)
	wg.Wait()
	checkOrdered(t, w.agents)
	listed := map[string]int{}
	for _, a := range w.agents {
		listed[a.GetKey()]++
	}
	for i := range n {
		if a := even(i); listed[a.Key] != 1 {
			t.Errorf("%s, there for the whole walk, listed %d times", a.AgentName, listed[a.Key])
		}
	}
	if w.pages < n/100 || inserted.Load() < int64(w.pages) {
		t.Fatalf("%d pages with %d inserts and %d removals meanwhile: the walk did not run alongside the writes", w.pages, inserted.Load(), removed.Load())
	}
	t.Logf("%d pages, %d listed; %d inserted and %d removed meanwhile", w.pages, len(w.agents), inserted.Load(), removed.Load())
}

// A page token the CP did not make is InvalidArgument naming page_token.
func TestListAgentsBadPageToken(t *testing.T) {
	r := startListRig(t, 3, agentdbtest.Synthetic)
	for _, tok := range []string{"not a token", "AAAA", "AQVwYQ"} {
		_, err := r.admin.ListAgents(t.Context(), &adminv1.ListAgentsRequest{PageToken: tok})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "page_token") {
			t.Errorf("token %q: %v; want InvalidArgument naming page_token", tok, err)
		}
	}
	// A well-formed token past the last agent is an empty last page.
	resp, err := r.admin.ListAgents(t.Context(), &adminv1.ListAgentsRequest{PageToken: registry.Cursor{Project: "zzz", AgentName: "z"}.Token()})
	if err != nil || len(resp.GetAgents()) != 0 || resp.GetNextPageToken() != "" || resp.GetTotal() != 3 {
		t.Errorf("past the end: %v, %v", resp, err)
	}
}

// `clawker controlplane agents` against the real service walks every page
// (12,345 agents: three of the CLI's pages) and lists them all, in order.
func TestListAgentsCLIWalksThePages(t *testing.T) {
	const n = 12_345
	r := startListRig(t, n, agentdbtest.Synthetic)
	var stdout, stderr bytes.Buffer
	code := clawkercli.Run(clawkercli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: r.home.Getenv},
		[]string{"clawker", "controlplane", "agents", "--format", "json"})
	if code != 0 {
		t.Fatalf("clawker controlplane agents: exit %d: %s", code, stderr.String())
	}
	var got []clawkercli.AgentReport
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("the CLI lists %d agents, want %d", len(got), n)
	}
	seen := map[string]bool{}
	for i, a := range got {
		if seen[a.Key] {
			t.Fatalf("%s/%s listed twice", a.Project, a.Agent)
		}
		seen[a.Key] = true
		if i > 0 && (got[i-1].Project > a.Project || (got[i-1].Project == a.Project && got[i-1].Agent >= a.Agent)) {
			t.Fatalf("row %d %s/%s after %s/%s", i, a.Project, a.Agent, got[i-1].Project, got[i-1].Agent)
		}
	}
}

// BenchmarkListAgentsInProcess: a walk of 10,000 agents through the real
// AdminService and registry in this process (mTLS on loopback, no token
// introspection), so a profile shows the CP's own share of ListAgents.
func BenchmarkListAgentsInProcess(b *testing.B) {
	const n = 10_000
	r := startListRig(b, n, agentdbtest.Synthetic)
	for _, size := range []uint32{0, 5000} {
		b.Run(fmt.Sprintf("page_size=%d", size), func(b *testing.B) {
			for b.Loop() {
				got, token := 0, ""
				for {
					resp, err := r.admin.ListAgents(context.Background(), &adminv1.ListAgentsRequest{PageSize: size, PageToken: token})
					if err != nil {
						b.Fatal(err)
					}
					got += len(resp.GetAgents())
					if token = resp.GetNextPageToken(); token == "" {
						break
					}
				}
				if got != n {
					b.Fatalf("%d agents, want %d", got, n)
				}
			}
		})
	}
	b.Run("first_page", func(b *testing.B) {
		for b.Loop() {
			if _, err := r.admin.ListAgents(context.Background(), &adminv1.ListAgentsRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
