package main_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// registerNewConn does what a starting clawkerd does: a brand-new
// connection (TCP, TLS 1.3 with its client certificate, HTTP/2), one
// Register (with the agent token opts carry), then it hangs up.
func registerNewConn(addr string, cfg *tls.Config, id certs.AgentIdentity, opts ...grpc.DialOption) (*agentv1.RegisterResponse, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return agentv1.NewAgentServiceClient(cc).Register(ctx, &agentv1.RegisterRequest{Project: id.Project, AgentName: id.Agent})
}

func reportRate(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit)
	}
}

// BenchmarkRegisterNewTLS: one Register per op, each over a brand-new TLS
// connection, against a running CP. same_cert re-registers one agent (the
// idempotent path: a read, no commit); new_cert registers a new agent each
// op (a new binding: the CP introspects its token at Hydra and verifies its
// assertion, then one durable sqlite commit), with the token fetched before
// the timer; new_cert_fetching also fetches each token in the timed loop
// (the assertion exchanged at Hydra's token endpoint over a TLS connection
// of its own), as a starting clawkerd does before its first Register.
func BenchmarkRegisterNewTLS(b *testing.B) {
	b.Run("same_cert", func(b *testing.B) {
		cp := startIdentityCP(b, "")
		id := certs.AgentIdentity{Project: "bench", Agent: "same", ContainerID: cptest.RandomContainerID(b)}
		cfg, _ := cptest.AgentTLSConfig(b, cp.m, id)
		addr := cp.agentAddr(b)
		// The first Register creates the binding: it needs the agent
		// token; the idempotent ones timed below go without, as clawkerd's do.
		if _, err := registerNewConn(addr, cfg, id, cp.agentToken(id.ContainerID)); err != nil {
			b.Fatalf("first Register: %v", err)
		}
		b.ResetTimer()
		for range b.N {
			if _, err := registerNewConn(addr, cfg, id); err != nil {
				b.Fatalf("Register: %v\nstderr tail:\n%s", err, cp.p.Tail(cptest.TailLines))
			}
		}
		b.StopTimer()
		reportRate(b, "registrations/s")
	})
	newCert := func(fetchFirst bool) func(b *testing.B) {
		return func(b *testing.B) {
			cp := startIdentityCP(b, "")
			addr := cp.agentAddr(b)
			ids := make([]certs.AgentIdentity, b.N)
			cfgs := make([]*tls.Config, b.N)
			tokens := make([]grpc.DialOption, b.N)
			for i := range ids {
				ids[i] = certs.AgentIdentity{Project: "bench", Agent: fmt.Sprintf("new-%07d", i), ContainerID: cptest.RandomContainerID(b)}
				cfgs[i], _ = cptest.AgentTLSConfig(b, cp.m, ids[i])
				if fetchFirst {
					tokens[i] = cptest.AgentTokenCredsFetched(b, cp.home, cp.m, ids[i].ContainerID)
				} else {
					tokens[i] = cp.agentToken(ids[i].ContainerID) // fetched at its first use
				}
			}
			b.ResetTimer()
			for i := range b.N {
				if _, err := registerNewConn(addr, cfgs[i], ids[i], tokens[i]); err != nil {
					b.Fatalf("Register: %v\nstderr tail:\n%s", err, cp.p.Tail(cptest.TailLines))
				}
			}
			b.StopTimer()
			reportRate(b, "registrations/s")
		}
	}
	b.Run("new_cert", newCert(true))
	b.Run("new_cert_fetching", newCert(false))
}

// BenchmarkRegisterReusedConn is the baseline of BenchmarkRegisterNewTLS:
// the same idempotent Register, over one connection kept open, so only the
// RPC and the registry lookup are timed.
func BenchmarkRegisterReusedConn(b *testing.B) {
	cp := startIdentityCP(b, "")
	a := cp.newAgent(b, "bench", "reused")
	a.register(b)
	ctx := context.Background()
	req := &agentv1.RegisterRequest{Project: a.id.Project, AgentName: a.id.Agent}
	b.ResetTimer()
	for range b.N {
		if _, err := a.client.Register(ctx, req); err != nil {
			b.Fatalf("Register: %v", err)
		}
	}
	b.StopTimer()
	reportRate(b, "registrations/s")
}

// BenchmarkBareTLSHandshake: the TLS 1.3 handshake alone, with an agent
// certificate, to set the Register figures against.
//
//   - cp_agent_port: tls.Dial (the handshake) and Close against the CP's
//     agent port. With TLS 1.3 the client is done before the server has
//     checked its certificate, so part of the server's work is not waited
//     for.
//   - cp_agent_port_full: the same, then one read: it returns once the
//     server finished its side (gRPC then sends its HTTP/2 settings), so the
//     whole handshake is timed, as a Register has to wait for it.
//   - in_process: the CP's own server TLS config (certs.ServerTLSConfig for
//     agents) served by tls.Listen in this process; the client waits for a
//     byte the server writes after its handshake.
func BenchmarkBareTLSHandshake(b *testing.B) {
	dialOnce := func(b *testing.B, addr string, cfg *tls.Config, read bool) {
		d := &net.Dialer{Timeout: callTimeout}
		c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
		if err != nil {
			b.Fatalf("TLS handshake with %s: %v", addr, err)
		}
		if read {
			_ = c.SetReadDeadline(time.Now().Add(callTimeout))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				b.Fatalf("first read from %s: %v", addr, err)
			}
		}
		_ = c.Close()
	}
	for _, full := range []bool{false, true} {
		name := "cp_agent_port"
		if full {
			name += "_full"
		}
		b.Run(name, func(b *testing.B) {
			cp := startIdentityCP(b, "")
			id := certs.AgentIdentity{Project: "bench", Agent: "handshake", ContainerID: cptest.RandomContainerID(b)}
			cfg, _ := cptest.AgentTLSConfig(b, cp.m, id)
			// gRPC's server insists on ALPN h2, as its clients offer it.
			cfg.NextProtos = []string{"h2"}
			addr := cp.agentAddr(b)
			b.ResetTimer()
			for range b.N {
				dialOnce(b, addr, cfg, full)
			}
			b.StopTimer()
			reportRate(b, "handshakes/s")
		})
	}
	b.Run("in_process", func(b *testing.B) {
		home := cptest.NewHome(b)
		m := home.EnsureAuth(b)
		srvCfg, err := m.ServerTLSConfig(certs.AgentCommonName)
		if err != nil {
			b.Fatal(err)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		defer func() {
			ln.Close()
			wg.Wait()
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(callTimeout))
					if err := c.(*tls.Conn).Handshake(); err == nil {
						_, _ = c.Write([]byte{0})
					}
				}()
			}
		}()
		id := certs.AgentIdentity{Project: "bench", Agent: "handshake", ContainerID: cptest.RandomContainerID(b)}
		cfg, _ := cptest.AgentTLSConfig(b, m, id)
		addr := ln.Addr().String()
		b.ResetTimer()
		for range b.N {
			dialOnce(b, addr, cfg, true)
		}
		b.StopTimer()
		reportRate(b, "handshakes/s")
	})
}

// registry10k is a registry file holding 10,000 bindings, built once per
// test process.
var registry10k struct {
	once  sync.Once
	files map[string][]byte // file name suffix ("", "-wal") -> content
	err   error
}

const listAgentsN = 10_000

// buildRegistry10k registers listAgentsN agents with agentdb directly. It
// builds on /dev/shm when there is one: every Register is a durable commit,
// and 10,000 fsyncs on a disk would dominate the benchmark's setup.
func buildRegistry10k() (map[string][]byte, error) {
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "clawker-bench-registry-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "controlplane.db")
	ctx := context.Background()
	db, err := agentdb.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	t0 := time.Now().Add(-time.Hour)
	for i := range listAgentsN {
		// Thumbprint and container id are both 64 hex digits, like real ones.
		tp := fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15+1)
		cid := fmt.Sprintf("%064x", uint64(i)*0xc2b2ae3d27d4eb4f+7)
		if _, _, err := db.Register(ctx, agentdb.Agent{
			Project: fmt.Sprintf("project-%02d", i%50), AgentName: fmt.Sprintf("agent-%05d", i),
			ContainerID: cid, Thumbprint: tp, RegisteredAt: t0.Add(time.Duration(i) * time.Millisecond),
		}); err != nil {
			db.Close()
			return nil, fmt.Errorf("registering agent %d: %w", i, err)
		}
	}
	if err := db.Close(); err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(path + suffix)
		if err == nil {
			files[suffix] = b
		} else if !os.IsNotExist(err) {
			return nil, err
		}
	}
	return files, nil
}

// BenchmarkListAgents10k: ListAgents against a CP whose registry holds
// 10,000 agents. admin_grpc is the CLI's walk of every page (CLI
// certificate, one kept-open connection; resp_bytes is one page);
// agentdb_list is the same registry read with
// agentdb.List in this process, the storage share of it.
func BenchmarkListAgents10k(b *testing.B) {
	registry10k.once.Do(func() { registry10k.files, registry10k.err = buildRegistry10k() })
	if registry10k.err != nil {
		b.Fatalf("building the 10k registry: %v", registry10k.err)
	}
	writeRegistry := func(b *testing.B, db string) {
		if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
			b.Fatal(err)
		}
		for suffix, content := range registry10k.files {
			if err := os.WriteFile(db+suffix, content, 0o600); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("admin_grpc", func(b *testing.B) {
		home := identityHome(b, "")
		writeRegistry(b, home.Paths(b).RegistryDB)
		p := cptest.StartCP(b, home, cpBinary(b), "CLAWKER_CP_ORY_DIR="+cptest.OryDir(b))
		p.WaitHealthy(b, healthyTimeout)
		cp := &identityCP{home: home, m: home.EnsureAuth(b), p: p}
		admin := cp.admin(b)
		// Large enough for the answer whatever its size; resp_bytes says
		// how close it comes to gRPC's default 4 MiB receive limit.
		call := grpc.MaxCallRecvMsgSize(64 << 20)
		ctx := context.Background()
		first, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{}, call)
		if err != nil {
			b.Fatalf("ListAgents: %v\nstderr tail:\n%s", err, p.Tail(cptest.TailLines))
		}
		// Every page, as the CLI walks them (list_bench_test.go).
		if n, _, err := walkAgents(ctx, admin, 0, call); err != nil || n != listAgentsN {
			b.Fatalf("ListAgents lists %d agents, want %d: %v", n, listAgentsN, err)
		}
		b.ResetTimer()
		for range b.N {
			if n, _, err := walkAgents(ctx, admin, 0, call); err != nil || n != listAgentsN {
				b.Fatalf("ListAgents: %d agents, %v", n, err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(proto.Size(first)), "resp_bytes")
	})
	b.Run("agentdb_list", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "controlplane.db")
		writeRegistry(b, path)
		ctx := context.Background()
		db, err := agentdb.Open(ctx, path)
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		b.ResetTimer()
		for range b.N {
			all, err := db.List(ctx)
			if err != nil || len(all) != listAgentsN {
				b.Fatalf("List: %d agents, %v", len(all), err)
			}
		}
	})
}
