package health_test

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/clawker/clawker-cp/actors/health"
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

func TestLoopbackOnly(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:7080": true,
		"127.0.0.5:7080": true,
		"[::1]:7080":     true,
		"localhost:7080": true,
		"0.0.0.0:7080":   false,
		"[::]:7080":      false,
		":7080":          false,
		"10.0.0.2:7080":  false,
		"example.com:80": false,
		"not an address": false,
	} {
		if got := health.LoopbackOnly(addr); got != want {
			t.Errorf("LoopbackOnly(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestListenDebugRefusesExposedAddresses(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0"} {
		if d, err := health.ListenDebug(addr); err == nil {
			_ = d.Close()
			t.Errorf("ListenDebug(%q) accepted an address reachable from outside", addr)
		}
	}
	d, err := health.ListenDebug("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if d.Port() == 0 || d.Addr() != "127.0.0.1:"+strconv.Itoa(d.Port()) {
		t.Errorf("Addr %q, Port %d", d.Addr(), d.Port())
	}
	// Close releases the port when no actor took the listener.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", d.Addr())
	if err != nil {
		t.Fatalf("the port is still held after Close: %v", err)
	}
	_ = ln.Close()
}

func listenDebug(t *testing.T) *health.DebugListener {
	t.Helper()
	d, err := health.ListenDebug("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// wantTree checks that url serves the rig's actor tree.
func wantTree(t *testing.T, url string) {
	t.Helper()
	code, body := get(t, url)
	var n cpapi.ActorNode
	if code != http.StatusOK || json.Unmarshal([]byte(body), &n) != nil || n.Path != "hp" {
		t.Errorf("GET %s: %d %s, want 200 and the tree under hp", url, code, body)
	}
}

// TestDebugOffAnExposedHealthPort: a health port bound to a non-loopback
// address (the container's 0.0.0.0, reachable from clawker-net) serves
// /healthz only: no /debug/actors or /debug/state, and no fault hook even
// with the knob on; the internal listener serves those two, and nothing
// else.
func TestDebugOffAnExposedHealthPort(t *testing.T) {
	t.Parallel()
	port := cptest.FreePorts(t, 1)[0]
	debug := listenDebug(t)
	r := startRigDebug(t, true, true, "0.0.0.0:"+strconv.Itoa(port), debug)
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready carried %v", m.Err)
	}
	hp := "http://127.0.0.1:" + strconv.Itoa(port)
	internal := "http://" + debug.Addr()

	if code, h := healthz(t, hp); code != http.StatusServiceUnavailable || h.Status != cpapi.StatusNotReady {
		t.Errorf("/healthz on the health port: %d %+v", code, h)
	}
	for _, p := range []string{"/debug/actors", "/debug/state"} {
		if code, body := get(t, hp+p); code != http.StatusNotFound {
			t.Errorf("GET %s on an exposed health port: %d %s, want 404", p, code, body)
		}
	}
	// The knob is on, yet the route is absent (a 404 of the mux, not of an
	// unknown actor).
	if code, body := post(t, hp+"/debug/faults?actor=nobody&kind=panic"); code != http.StatusNotFound || strings.Contains(body, "no live actor") {
		t.Errorf("POST /debug/faults on an exposed health port: %d %s, want the route absent", code, body)
	}

	testkit.WaitFor(t, 5*time.Second, "both children in the tree", func() bool { return len(r.tree.Names()) == 3 })
	wantTree(t, internal+"/debug/actors")
	// No overseer is wired: the route is there and says so.
	if code, body := get(t, internal+"/debug/state"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no overseer") {
		t.Errorf("GET /debug/state on the internal listener: %d %s", code, body)
	}
	for _, p := range []string{"/healthz", "/debug/faults"} {
		if code, body := get(t, internal+p); code != http.StatusNotFound {
			t.Errorf("GET %s on the internal listener: %d %s, want 404", p, code, body)
		}
	}
	if code, body := post(t, internal+"/debug/faults?actor=victim&kind=panic"); code != http.StatusNotFound {
		t.Errorf("POST /debug/faults on the internal listener: %d %s, want 404", code, body)
	}
}

// TestDebugOnALoopbackHealthPort: a health port on loopback (a CP run as a
// host process) is reachable from no agent: it serves /debug/* as well as
// the internal listener.
func TestDebugOnALoopbackHealthPort(t *testing.T) {
	t.Parallel()
	debug := listenDebug(t)
	r := startRigDebug(t, false, true, "", debug)
	r.waitReady(t)
	testkit.WaitFor(t, 5*time.Second, "both children in the tree", func() bool { return len(r.tree.Names()) == 3 })
	wantTree(t, r.base+"/debug/actors")
	wantTree(t, "http://"+debug.Addr()+"/debug/actors")
}

// TestDebugListenerAfterRestart: a restarted health actor serves the
// internal listener again on the same address (Oathkeeper's rules name it).
func TestDebugListenerAfterRestart(t *testing.T) {
	t.Parallel()
	debug := listenDebug(t)
	r := startRigDebug(t, true, false, "", debug)
	r.waitReady(t)
	wantTree(t, "http://"+debug.Addr()+"/debug/actors")
	if code, body := post(t, r.base+"/debug/faults?actor=health&kind=panic"); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, body)
	}
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready after restart carried %v", m.Err)
	}
	if n := r.tree.Restarts(r.health); n != 1 {
		t.Fatalf("health restarts %d", n)
	}
	wantTree(t, "http://"+debug.Addr()+"/debug/actors")
}

// TestFaultsRefusedOnAnExposedHealthPort: with CLAWKER_CP_DEBUG_FAULTS on, a
// health port on 0.0.0.0 serves no fault hook, a fault posted there reaches
// no actor, and the refusal is logged once, not again when the health actor
// restarts and binds the port anew.
func TestFaultsRefusedOnAnExposedHealthPort(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	port := cptest.FreePorts(t, 1)[0]
	addr := "0.0.0.0:" + strconv.Itoa(port)
	r := startRigLog(t, true, true, addr, nil, zap.New(core))
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready carried %v", m.Err)
	}
	hp := "http://127.0.0.1:" + strconv.Itoa(port)
	victim := r.victim(t)
	for _, kind := range []string{"panic", "block&duration=1s"} {
		if code, body := post(t, hp+"/debug/faults?actor=victim&kind="+kind); code != http.StatusNotFound {
			t.Errorf("POST /debug/faults kind=%s on an exposed health port: %d %s, want 404", kind, code, body)
		}
	}
	refused := func() []observer.LoggedEntry {
		return logs.FilterField(zap.String("event", "debug_knob_refused")).All()
	}
	checkRefused := func(when string) {
		t.Helper()
		e := refused()
		if len(e) != 1 {
			t.Fatalf("%s: %d debug_knob_refused lines, want 1", when, len(e))
		}
		if e[0].Level != zapcore.WarnLevel || e[0].ContextMap()["knob"] != "CLAWKER_CP_DEBUG_FAULTS" || e[0].ContextMap()["addr"] != addr {
			t.Errorf("%s: debug_knob_refused line %v %v", when, e[0].Level, e[0].ContextMap())
		}
	}
	checkRefused("after start")
	lis := logs.FilterField(zap.String("event", "health_listening")).All()
	if len(lis) != 1 || lis[0].ContextMap()["faults"] != false {
		t.Errorf("health_listening lines %v, want one with faults false", lis)
	}

	// Restart the health actor from inside (no HTTP hook to do it with):
	// the new incarnation refuses the hook again, silently.
	r.sys.Root.Send(r.health, &supervise.Fault{Kind: supervise.FaultPanic})
	if m := r.waitReady(t); m.Err != nil {
		t.Fatalf("Ready after restart carried %v", m.Err)
	}
	if n := r.tree.Restarts(r.health); n != 1 {
		t.Fatalf("health restarts %d, want 1", n)
	}
	// A fresh connection: the pooled one died with the old incarnation's
	// server, and a POST is not retried on it.
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := fresh.Post(hp+"/debug/faults?actor=victim&kind=panic", "text/plain", nil)
	if err != nil {
		t.Fatalf("POST /debug/faults after the restart: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST /debug/faults after the restart: %d, want 404", resp.StatusCode)
	}
	checkRefused("after a restart")
	if n := r.tree.Restarts(victim); n != 0 {
		t.Errorf("the victim restarted %d times: a fault got through", n)
	}
}

// TestFaultsServedOnALoopbackHealthPort: the same knob on a loopback health
// port serves the hook and logs no refusal.
func TestFaultsServedOnALoopbackHealthPort(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	r := startRigLog(t, true, true, "", nil, zap.New(core))
	r.waitReady(t)
	victim := r.victim(t)
	if code, body := post(t, r.base+"/debug/faults?actor=victim&kind=panic"); code != http.StatusAccepted {
		t.Fatalf("POST /debug/faults on a loopback health port: %d %s", code, body)
	}
	testkit.WaitFor(t, 5*time.Second, "the victim restarted", func() bool { return r.tree.Restarts(victim) == 1 })
	if e := logs.FilterField(zap.String("event", "debug_knob_refused")).All(); len(e) != 0 {
		t.Errorf("debug_knob_refused on a loopback health port: %v", e)
	}
	lis := logs.FilterField(zap.String("event", "health_listening")).All()
	if len(lis) != 1 || lis[0].ContextMap()["faults"] != true {
		t.Errorf("health_listening lines %v, want one with faults true", lis)
	}
}
