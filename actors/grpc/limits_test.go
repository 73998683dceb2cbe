package grpc_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cpgrpc "github.com/clawker/clawker-cp/actors/grpc"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/testkit"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// startLimitedAgentService is startAgentService (no introspector) with
// the agent server's limits set to lim.
func startLimitedAgentService(t *testing.T, lim cpgrpc.Limits) *agentFixture {
	t.Helper()
	return startAgentServiceWith(t, func(c *cpgrpc.Config) { c.AgentLimits = lim })
}

// from dials from the loopback address src (127.0.0.0/8 is all local),
// which the server sees as a peer of its own.
func from(src string) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return d.DialContext(ctx, "tcp", a)
	})
}

// agentFrom is a client with a fresh agent certificate, dialling from src.
func (f *agentFixture) agentFrom(t *testing.T, name, src string) (agentv1.AgentServiceClient, certs.AgentIdentity) {
	t.Helper()
	id := certs.AgentIdentity{Project: "p", Agent: name, ContainerID: cptest.RandomContainerID(t)}
	cfg, _ := cptest.AgentTLSConfig(t, f.m, id)
	return agentv1.NewAgentServiceClient(cptest.DialGRPC(t, f.addr, cfg, from(src))), id
}

// TestRegisterRateLimitedPerPeer: a burst of Register from one address is
// served up to the burst and the next is refused with ResourceExhausted
// (naming the limit, before the registry is asked); another address,
// even for the same agent, is unaffected.
func TestRegisterRateLimitedPerPeer(t *testing.T) {
	t.Parallel()
	const burst = 3
	// A rate so low that no token comes back during the test.
	f := startLimitedAgentService(t, cpgrpc.Limits{RegisterBurst: burst, RegisterRate: 1e-6, LimitLoopback: true})
	c, id := f.agentFrom(t, "a", "127.0.0.1")
	for i := range burst {
		if _, err := register(t, c, id, ""); err != nil {
			t.Fatalf("Register %d of the burst: %v", i+1, err)
		}
	}
	_, before := f.reg.counts()
	_, err := register(t, c, id, "")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "127.0.0.1") ||
		!strings.Contains(err.Error(), "at most 3 at once") {
		t.Fatalf("Register %d from one peer: %v, want ResourceExhausted naming the peer and the limit", burst+1, err)
	}
	if _, after := f.reg.counts(); after != before {
		t.Errorf("the refused Register reached the registry (%d requests, was %d)", after, before)
	}
	if n := f.logs.FilterField(zap.String("event", "register_rate_limited")).Len(); n != 1 {
		t.Errorf("%d register_rate_limited lines, want 1", n)
	}

	// Another address is a peer of its own: its burst is whole.
	other, otherID := f.agentFrom(t, "b", "127.0.0.2")
	for i := range burst {
		if _, err := register(t, other, otherID, ""); err != nil {
			t.Fatalf("Register %d from another peer: %v", i+1, err)
		}
	}
	// The same agent from the other address counts against that one.
	if _, err := register(t, other, otherID, ""); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("Register %d from the other peer: %v, want ResourceExhausted", burst+1, err)
	}
}

// TestAgentServerRefusesOversizedMessages: a request above MaxRecvMsgSize
// fails with ResourceExhausted and the server goes on serving.
func TestAgentServerRefusesOversizedMessages(t *testing.T) {
	t.Parallel()
	f := startLimitedAgentService(t, cpgrpc.Limits{MaxRecvMsgSize: 4 << 10})
	c, id := f.agentFrom(t, "big", "127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Register(ctx, &agentv1.RegisterRequest{Project: strings.Repeat("p", 8<<10), AgentName: id.Agent})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("an 8 KiB Register against a 4 KiB limit: %v, want ResourceExhausted", err)
	}
	if _, err := register(t, c, id, ""); err != nil {
		t.Errorf("a normal Register after the refused one: %v", err)
	}
	if _, before := f.reg.counts(); before != 1 {
		t.Errorf("registry saw %d Registers, want 1 (the oversized one never decoded)", before)
	}
}

// TestAgentListenerCapsConnectionsPerPeer: past MaxConnsPerPeer a new
// connection from the same address is closed before its handshake;
// another address still connects; closing one frees its slot.
func TestAgentListenerCapsConnectionsPerPeer(t *testing.T) {
	t.Parallel()
	f := startLimitedAgentService(t, cpgrpc.Limits{MaxConnsPerPeer: 2, LimitLoopback: true})
	id := certs.AgentIdentity{Project: "p", Agent: "conns", ContainerID: cptest.RandomContainerID(t)}
	cfg, _ := cptest.AgentTLSConfig(t, f.m, id)
	cfg.NextProtos = []string{"h2"}
	dial := func(src string) (*tls.Conn, error) {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", f.addr, cfg)
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
		}
		return c, err
	}
	first, err := dial("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := dial("127.0.0.1"); err == nil {
		t.Fatal("a third connection from one address completed its handshake, want it closed (MaxConnsPerPeer 2)")
	}
	if _, err := dial("127.0.0.3"); err != nil {
		t.Errorf("a connection from another address: %v", err)
	}
	if n := f.logs.FilterField(zap.String("event", "grpc_conn_limited")).Len(); n != 1 {
		t.Errorf("%d grpc_conn_limited lines, want 1", n)
	}
	_ = first.Close()
	testkit.WaitFor(t, 10*time.Second, "the closed connection's slot to be free", func() bool {
		c, err := dial("127.0.0.1")
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
}

// TestLoopbackPeersExemptByDefault: without LimitLoopback a loopback peer
// (the host, where a host-process CP's clawkerds all connect from) is held
// to neither the Register rate nor the per-peer connection cap.
func TestLoopbackPeersExemptByDefault(t *testing.T) {
	t.Parallel()
	f := startLimitedAgentService(t, cpgrpc.Limits{RegisterBurst: 1, RegisterRate: 1e-6, MaxConnsPerPeer: 1})
	for i := range 3 {
		c, id := f.agentFrom(t, fmt.Sprintf("lo-%d", i), "127.0.0.1")
		for j := range 3 {
			if _, err := register(t, c, id, ""); err != nil {
				t.Fatalf("agent %d, Register %d from loopback: %v", i, j+1, err)
			}
		}
	}
}
