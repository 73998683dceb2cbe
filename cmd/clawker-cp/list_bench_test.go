package main_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/clawker/clawker-cp/pkg/agentdb/agentdbtest"
	"github.com/clawker/clawker-cp/pkg/clawkercli"
	"github.com/clawker/clawker-cp/pkg/cptest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// bulkRegistries are registry files of n bindings (n -> file suffix ->
// content), built once per test process.
var bulkRegistries = struct {
	mu    sync.Mutex
	files map[int]map[string][]byte
}{files: map[int]map[string][]byte{}}

// bulkRegistry returns the files of a registry holding n bindings
// (agentdbtest.Synthetic), built in one transaction.
func bulkRegistry(b *testing.B, n int) map[string][]byte {
	b.Helper()
	bulkRegistries.mu.Lock()
	defer bulkRegistries.mu.Unlock()
	if f, ok := bulkRegistries.files[n]; ok {
		return f
	}
	path := filepath.Join(b.TempDir(), "controlplane.db")
	agentdbtest.Fill(b, path, n, agentdbtest.Synthetic)
	files := map[string][]byte{}
	for _, suffix := range []string{"", "-wal"} {
		content, err := os.ReadFile(path + suffix)
		if err == nil {
			files[suffix] = content
		} else if !os.IsNotExist(err) {
			b.Fatal(err)
		}
	}
	bulkRegistries.files[n] = files
	return files
}

// startListCP starts a CP whose registry holds n bindings.
func startListCP(b *testing.B, n int) *identityCP {
	b.Helper()
	files := bulkRegistry(b, n)
	home := identityHome(b, "")
	db := home.Paths(b).RegistryDB
	if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
		b.Fatal(err)
	}
	for suffix, content := range files {
		if err := os.WriteFile(db+suffix, content, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	p := cptest.StartCP(b, home, cpBinary(b), "CLAWKER_CP_ORY_DIR="+cptest.OryDir(b))
	p.WaitHealthy(b, healthyTimeout)
	return &identityCP{home: home, m: home.EnsureAuth(b), p: p}
}

// walkAgents lists every agent page by page with pageSize, as the CLI
// does, and returns how many it got and in how many calls. A server that
// does not page answers everything at once (empty next_page_token).
func walkAgents(ctx context.Context, admin adminv1.AdminServiceClient, pageSize uint32, opts ...grpc.CallOption) (agents, calls int, err error) {
	token := ""
	for {
		resp, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{PageSize: pageSize, PageToken: token}, opts...)
		if err != nil {
			return agents, calls, err
		}
		calls++
		agents += len(resp.GetAgents())
		if token = resp.GetNextPageToken(); token == "" {
			return agents, calls, nil
		}
	}
}

// BenchmarkListAgentsPaged: ListAgents through the AdminService of a
// running CP (CLI certificate and bearer token, one kept-open connection).
// walk_default and walk_max list every agent with the default page size
// and the largest one; first_page is one call of the default size; cli is
// `clawker controlplane agents --format json` in this process (dial, token,
// clock check, every page, the JSON written to nowhere). A CP that does not
// page answers the whole registry in one call: the gRPC walks are given a
// 64 MiB receive limit so they measure it too; the CLI keeps its own.
func BenchmarkListAgentsPaged(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			cp := startListCP(b, n)
			admin := cp.admin(b)
			ctx := context.Background()
			big := grpc.MaxCallRecvMsgSize(64 << 20)
			if got, _, err := walkAgents(ctx, admin, 0, big); err != nil || got != n {
				b.Fatalf("listing: %d agents, want %d: %v\nstderr tail:\n%s", got, n, err, cp.p.Tail(cptest.TailLines))
			}
			walk := func(pageSize uint32) func(b *testing.B) {
				return func(b *testing.B) {
					calls := 0
					for b.Loop() {
						got, c, err := walkAgents(ctx, admin, pageSize, big)
						if err != nil || got != n {
							b.Fatalf("walk: %d agents, want %d: %v", got, n, err)
						}
						calls = c
					}
					b.ReportMetric(float64(calls), "calls/walk")
				}
			}
			b.Run("walk_default", walk(0))
			b.Run("walk_max", walk(5000))
			b.Run("first_page", func(b *testing.B) {
				for b.Loop() {
					if _, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{}, big); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("cli", func(b *testing.B) {
				vars := map[string]string{}
				for _, kv := range cp.home.Env() {
					k, v, _ := strings.Cut(kv, "=")
					vars[k] = v
				}
				env := clawkercli.Env{Stdout: io.Discard, Getenv: func(k string) string { return vars[k] }}
				for b.Loop() {
					var stderr bytes.Buffer
					env.Stderr = &stderr
					if code := clawkercli.Run(env, []string{"clawker", "controlplane", "agents", "--format", "json"}); code != 0 {
						b.Fatalf("clawker controlplane agents: exit %d: %s", code, strings.TrimSpace(stderr.String()))
					}
				}
			})
		})
	}
}
