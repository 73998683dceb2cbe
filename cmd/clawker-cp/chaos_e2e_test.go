package main_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/adminclient"
	"github.com/clawker/clawker-cp/pkg/agentdb"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// chaosKillsEnv overrides the number of SIGKILLs (50) for a quicker run
// by hand; CI runs the full count.
const chaosKillsEnv = "CLAWKER_TEST_CHAOS_KILLS"

// TestChaosSIGKILL kills the CP with SIGKILL 50 times, each at a random
// point of its life, while simulated agents register, rules are added and
// removed and firewall orders run, and a probe loop inside an enforced
// agent container tries the outside host by TCP and UDP every 20 ms (one
// loop per kill: from before it until the next CP is green).
// After every kill the registry passes sqlite's integrity check and holds
// every registration acknowledged so far; across the whole run the loop
// never reaches the outside host (every TCP attempt ends at the proxy or
// fails, every UDP one is EPERM). Logs the time from each kill until the
// next CP answers /healthz 200, p50 and p99.
func TestChaosSIGKILL(t *testing.T) {
	kills := 50
	if v := os.Getenv(chaosKillsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive count", chaosKillsEnv, v)
		}
		kills = n
	}
	d := cptest.RequireDocker(t)
	tn := cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	tn.StartFirewallStandins(t, proxyPort)
	outside := listenOutside(t, tn.Gateway)
	home := identityHome(t, fmt.Sprintf("firewall: {enable: true, proxy_port: %d}\n", proxyPort))
	m := home.EnsureAuth(t)
	pinDir := cptest.TestPinDir(t)
	bin := cpBinary(t)
	start := func() *cptest.Process {
		return cptest.StartCP(t, home, bin, "CLAWKER_CP_DEBUG_PIN_DIR="+pinDir, "CLAWKER_CP_DEBUG_NETWORK="+tn.Name,
			"CLAWKER_CP_ORY_DIR="+cptest.OryDir(t))
	}
	s, err := settings.Load(home.SettingsFile(t))
	if err != nil {
		t.Fatal(err)
	}
	var (
		cpMu    sync.Mutex
		cp      = start()
		stopAll atomic.Bool
	)
	cp.WaitHealthy(t, healthyTimeout)
	current := func() *cptest.Process { cpMu.Lock(); defer cpMu.Unlock(); return cp }

	agent := tn.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}, Labels: agentLabels})
	cptest.WaitFor(t, 30*time.Second, "the agent enforced", func() (bool, string) {
		return slices.Contains(enforcedIDs(t, home, s), agent.ID), ""
	})
	outTCP, outUDP := outside.tcpTarget(), outside.udpTarget()
	// One probe loop per kill, from before the kill until the next CP is
	// green (an exec is bounded, and its output with it).
	startLoop := func() (stop func() cptest.ProbeResult) {
		stopFile := "/stop-" + cptest.NewRunID()
		done := make(chan cptest.ProbeResult, 1)
		go func() {
			res, err := cptest.ExecProbeErr(d, agent.ID, "", "-timeout", "2s", "-loop", "-interval", "20ms", "-for", "2m",
				"-stop-file", stopFile, outTCP, outUDP)
			if err != nil {
				res.Stderr += "\n" + err.Error()
			}
			done <- res
		}()
		return func() cptest.ProbeResult {
			cptest.TouchInContainer(t, d, agent.ID, stopFile)
			select {
			case res := <-done:
				return res
			case <-time.After(time.Minute):
				t.Fatal("the probe loop did not stop")
			}
			return cptest.ProbeResult{}
		}
	}
	var outcomes []netprobe.Outcome
	var loopErrs []string

	// Registrations: one worker, each on a new connection with a new
	// certificate; what was acknowledged must survive every kill.
	var (
		ackMu              sync.Mutex
		acks               []acked
		regTried, regFails atomic.Int64
		rulesOK, rulesFail atomic.Int64
		wg                 sync.WaitGroup
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; !stopAll.Load(); i++ {
			id := certs.AgentIdentity{Project: "chaos", Agent: fmt.Sprintf("agent-%05d", i), ContainerID: cptest.RandomContainerID(t)}
			cfg, leaf := cptest.AgentTLSConfig(t, m, id)
			// A token for this container (an agent token makes its own
			// container's binding only), from the Hydra running now.
			conn := cptest.DialGRPC(t, cptest.Loopback(home.Ports(t).Agent()), cfg, cptest.AgentTokenCreds(t, home, m, id.ContainerID))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := agentv1.NewAgentServiceClient(conn).Register(ctx, &agentv1.RegisterRequest{Project: id.Project, AgentName: id.Agent})
			cancel()
			_ = conn.Close()
			regTried.Add(1)
			time.Sleep(20 * time.Millisecond) // about 50 a second: each one also orders an Enforce
			if err != nil {
				regFails.Add(1)
				time.Sleep(50 * time.Millisecond) // the CP is down or starting
				continue
			}
			ackMu.Lock()
			acks = append(acks, acked{resp.GetAgentKey(), id, leaf})
			ackMu.Unlock()
		}
	}()
	// Rule changes and firewall orders (an enable of the enforced agent:
	// a queue order to the eBPF owner and a cut), through the AdminService
	// as the CLI sends them, redialled after each kill.
	go func() {
		defer wg.Done()
		var admin *adminclient.Client
		for i := 0; !stopAll.Load(); i++ {
			if admin == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := adminclient.Dial(ctx, home.Paths(t), s, adminclient.WithOAuth())
				cancel()
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				admin = c
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			dst := fmt.Sprintf("chaos%d.test", i%8)
			var err error
			switch i % 3 {
			case 0:
				_, err = admin.FirewallAddRules(ctx, &adminv1.FirewallAddRulesRequest{Rules: []*adminv1.EgressRule{{Dst: dst}}})
			case 1:
				_, err = admin.FirewallRemoveRule(ctx, &adminv1.FirewallRemoveRuleRequest{Dst: dst})
			default:
				_, err = admin.FirewallEnable(ctx, &adminv1.FirewallEnableRequest{ContainerId: agent.ID})
			}
			cancel()
			if err != nil {
				rulesFail.Add(1)
				admin.Close()
				admin = nil
				continue
			}
			rulesOK.Add(1)
		}
		if admin != nil {
			admin.Close()
		}
	}()

	var toGreen []time.Duration
	for k := range kills {
		stopLoop := startLoop()
		// A random point: from just after green to well into steady state.
		time.Sleep(time.Duration(rand.Int64N(int64(1500 * time.Millisecond))))
		p := current()
		ackMu.Lock()
		ackedSoFar := slices.Clone(acks)
		ackMu.Unlock()
		killed := time.Now()
		if err := p.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", k, err)
		}
		if _, err := p.Wait(exitTimeout); err == nil {
			t.Fatalf("kill %d: the CP exited normally", k)
		}
		checkRegistry(t, home, k, ackedSoFar)

		next := start()
		cpMu.Lock()
		cp = next
		cpMu.Unlock()
		next.WaitHealthy(t, healthyTimeout)
		toGreen = append(toGreen, time.Since(killed))
		res := stopLoop()
		outcomes = append(outcomes, res.Outcomes...)
		if len(res.Outcomes) == 0 {
			loopErrs = append(loopErrs, fmt.Sprintf("kill %d: no attempt; stderr: %s", k, res.Stderr))
		}
	}
	stopAll.Store(true)
	wg.Wait()
	for _, e := range loopErrs {
		t.Error(e)
	}

	tcp, udp := 0, 0
	for _, o := range outcomes {
		switch o.What {
		case outTCP:
			tcp++
			if reachedOutside(o) || (o.OK && o.Reply != netprobe.Banner("proxy", proxyPort)) {
				t.Errorf("a TCP attempt got through: %+v", o)
			}
		case outUDP:
			udp++
			if !denied(o) {
				t.Errorf("a UDP attempt was not EPERM: %+v", o)
			}
		}
	}
	if tcp == 0 || udp == 0 {
		t.Fatalf("the probe loops made %d TCP and %d UDP attempts", tcp, udp)
	}
	if n := outside.reachedBy(agent.IP); n != 0 {
		t.Errorf("the outside host was reached %d times from the agent", n)
	}
	ackMu.Lock()
	defer ackMu.Unlock()
	if len(acks) == 0 || rulesOK.Load() == 0 {
		t.Errorf("%d registrations acknowledged, %d rule changes and orders answered: the load did not run", len(acks), rulesOK.Load())
	}
	slices.Sort(toGreen)
	pct := func(q float64) time.Duration { return toGreen[min(len(toGreen)-1, int(q*float64(len(toGreen))))] }
	t.Logf("%d SIGKILLs: back to green p50 %v, p99 %v, max %v", kills, pct(0.50), pct(0.99), toGreen[len(toGreen)-1])
	t.Logf("probe loop: %d TCP and %d UDP attempts, none through; registrations %d acknowledged of %d tried (%d failed around kills); rule changes and orders %d answered, %d failed",
		tcp, udp, len(acks), regTried.Load(), regFails.Load(), rulesOK.Load(), rulesFail.Load())
}

// enforcedIDs lists the containers the running CP reports enforced, or
// none when it does not answer.
func enforcedIDs(t *testing.T, home *cptest.Home, s settings.Settings) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := adminclient.Dial(ctx, home.Paths(t), s, adminclient.WithOAuth())
	if err != nil {
		return nil
	}
	defer c.Close()
	enforced, err := enforcedAgents(c)
	if err != nil {
		return nil
	}
	return slices.Collect(maps.Keys(enforced))
}

// acked is a registration the CP acknowledged.
type acked struct {
	key  string
	id   certs.AgentIdentity
	leaf *x509.Certificate
}

// checkRegistry opens the registry of a dead CP: integrity_check must pass
// and every acknowledged binding must be there, as acknowledged.
func checkRegistry(t *testing.T, home *cptest.Home, kill int, acks []acked) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := agentdb.Open(ctx, home.Paths(t).RegistryDB)
	if err != nil {
		t.Fatalf("kill %d: opening the registry: %v", kill, err)
	}
	defer db.Close()
	if err := db.IntegrityCheck(ctx); err != nil {
		t.Fatalf("kill %d: integrity check: %v", kill, err)
	}
	for _, a := range acks {
		got, err := db.Get(ctx, a.key)
		if err != nil {
			t.Fatalf("kill %d: acknowledged %s (key %.12s) is not in the registry: %v", kill, a.id.Agent, a.key, err)
		}
		if got.ContainerID != a.id.ContainerID || got.Thumbprint != thumbprint(a.leaf) {
			t.Fatalf("kill %d: acknowledged %s stored as %+v", kill, a.id.Agent, got)
		}
	}
}
