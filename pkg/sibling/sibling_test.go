package sibling_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	docker "github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/sibling"
)

func TestMain(m *testing.M) { cptest.Main(m) }

// fakeSibling listens on UDP and TCP :53 as whoever runs it and answers
// each TCP connection with its uid and whether / is writable: the test
// reads its own confinement back through the network.
const fakeSibling = `package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	pc, err := net.ListenPacket("udp", ":53")
	if err != nil {
		fmt.Println("udp:", err)
		os.Exit(1)
	}
	defer pc.Close()
	ln, err := net.Listen("tcp", ":53")
	if err != nil {
		fmt.Println("tcp:", err)
		os.Exit(1)
	}
	fmt.Println("listening", os.Args[1:])
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, werr := os.Create("/probe-write")
		fmt.Fprintf(c, "uid=%d rootfs_writable=%v args=%v\n", os.Getuid(), werr == nil, os.Args[1:])
		c.Close()
	}
}
`

func TestEnsureAdoptReplaceRemove(t *testing.T) {
	d := cptest.RequireDocker(t)
	runID := cptest.NewRunID()
	n := cptest.NewTestNet(t, d, runID, cptest.TestNetOptions{})
	bin := cptest.BuildStatic(t, "fake-sibling", fakeSibling)
	// Each run's own binary bytes, so the image tag is this run's.
	dir := t.TempDir()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, []byte("\x00"+runID)...)
	path := filepath.Join(dir, "fake-sibling")
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	sp := sibling.Spec{
		Role: "dns", Name: "clawker-test-sibling-" + runID, Repo: "clawker-test-sibling", Binary: path,
		Network: n.Name, IP: n.Addr(201), Args: []string{"one"},
		SecretEnv: []string{"SECRET=1"}, Labels: n.Labels,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	out, err := sibling.Ensure(ctx, d, sp)
	if err != nil {
		t.Fatal(err)
	}
	if !out.ImageBuilt || out.Adopted || out.Replaced {
		t.Fatalf("first Ensure: %+v, want a built image and a new container", out)
	}
	reply := ask(t, n.Addr(201).String()+":53")
	if reply != "uid=65534 rootfs_writable=false args=[one]" {
		t.Fatalf("the sibling says %q, want nobody on a read-only root", reply)
	}
	ins, err := d.ContainerInspect(ctx, out.ID, docker.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hc := ins.Container.HostConfig
	if fmt.Sprint(hc.CapDrop) != "[ALL]" || len(hc.CapAdd) != 0 || !hc.ReadonlyRootfs || hc.Privileged {
		t.Errorf("host config: cap_drop %v cap_add %v read-only %v privileged %v", hc.CapDrop, hc.CapAdd, hc.ReadonlyRootfs, hc.Privileged)
	}
	if !strings.Contains(strings.Join(hc.SecurityOpt, ","), "no-new-privileges") {
		t.Errorf("security opts %v", hc.SecurityOpt)
	}

	// Same spec, fresh secret: adopted, not replaced.
	sp.SecretEnv = []string{"SECRET=2"}
	again, err := sibling.Ensure(ctx, d, sp)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Adopted || again.ID != out.ID || again.ImageBuilt {
		t.Fatalf("second Ensure: %+v, want the running container adopted", again)
	}

	// Another spec: replaced.
	sp.Args = []string{"two"}
	repl, err := sibling.Ensure(ctx, d, sp)
	if err != nil {
		t.Fatal(err)
	}
	if !repl.Replaced || repl.ID == out.ID {
		t.Fatalf("Ensure with new args: %+v, want a replacement", repl)
	}
	if reply := ask(t, n.Addr(201).String()+":53"); !strings.HasSuffix(reply, "args=[two]") {
		t.Fatalf("replacement says %q", reply)
	}

	// Dead: replaced by the next Ensure although its spec matches.
	if _, err := d.ContainerKill(ctx, repl.ID, docker.ContainerKillOptions{Signal: "KILL"}); err != nil {
		t.Fatal(err)
	}
	cptest.WaitFor(t, 10*time.Second, "the killed sibling not running", func() (bool, string) {
		_, running, err := sibling.Running(ctx, d, sp.Name)
		return err == nil && !running, fmt.Sprint(running, err)
	})
	back, err := sibling.Ensure(ctx, d, sp)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Replaced || back.Adopted {
		t.Fatalf("Ensure of a dead sibling: %+v", back)
	}

	if err := sibling.Remove(ctx, d, sp.Name); err != nil {
		t.Fatal(err)
	}
	if _, running, err := sibling.Running(ctx, d, sp.Name); err != nil || running {
		t.Fatalf("after Remove: running %v, %v", running, err)
	}
	if err := sibling.Remove(ctx, d, sp.Name); err != nil {
		t.Fatalf("removing a missing sibling: %v", err)
	}
}

func TestEnsureRefusesAForeignContainer(t *testing.T) {
	d := cptest.RequireDocker(t)
	runID := cptest.NewRunID()
	n := cptest.NewTestNet(t, d, runID, cptest.TestNetOptions{})
	// A probe container (not made by the control plane) holds the name.
	p := n.StartProbe(t, cptest.ProbeSpec{Args: []string{"-hold"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ins, err := d.ContainerInspect(ctx, p.ID, docker.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bin := cptest.BuildStatic(t, "fake-sibling", fakeSibling)
	_, err = sibling.Ensure(ctx, d, sibling.Spec{Role: "dns", Name: strings.TrimPrefix(ins.Container.Name, "/"), Repo: "clawker-test-sibling",
		Binary: bin, Network: n.Name, IP: n.Addr(201), Labels: n.Labels})
	if err == nil || !strings.Contains(err.Error(), "was not made by clawker's control plane") {
		t.Fatalf("Ensure over a foreign container: %v", err)
	}
	if _, running, _ := sibling.Running(ctx, d, strings.TrimPrefix(ins.Container.Name, "/")); !running {
		t.Fatal("the foreign container was touched")
	}
}

func ask(t *testing.T, addr string) string {
	t.Helper()
	var reply string
	cptest.WaitFor(t, 20*time.Second, "the sibling answers at "+addr, func() (bool, string) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 256)
		k, err := c.Read(buf)
		if err != nil {
			return false, err.Error()
		}
		reply = strings.TrimSpace(string(buf[:k]))
		return true, ""
	})
	return reply
}
