package agentrun

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/clawker/clawker-cp/pkg/cptest"
)

// The profile allows by default and refuses, with EPERM, every socket
// family but the four an agent needs, one comparison per rule.
func TestSeccompProfileShape(t *testing.T) {
	var p seccompProfile
	if err := json.Unmarshal([]byte(SeccompProfile()), &p); err != nil {
		t.Fatal(err)
	}
	if p.DefaultAction != "SCMP_ACT_ALLOW" {
		t.Fatalf("default action %s", p.DefaultAction)
	}
	refused := map[uint64]bool{}
	var gt uint64
	for _, r := range p.Syscalls {
		if !slices.Equal(r.Names, []string{"socket"}) {
			continue
		}
		if len(r.Args) != 1 || r.Args[0].Index != 0 || r.Action != "SCMP_ACT_ERRNO" || r.ErrnoRet == nil || *r.ErrnoRet != 1 {
			t.Fatalf("socket rule %+v", r)
		}
		switch r.Args[0].Op {
		case "SCMP_CMP_EQ":
			refused[r.Args[0].Value] = true
		case "SCMP_CMP_GT":
			gt = r.Args[0].Value
		default:
			t.Fatalf("socket rule %+v", r)
		}
	}
	for fam := uint64(0); fam < 64; fam++ {
		allowed := fam == afUnix || fam == afInet || fam == afInet6 || fam == afNetlink
		if got := !(refused[fam] || (gt != 0 && fam > gt)); got != allowed {
			t.Errorf("family %d: allowed=%v, want %v", fam, got, allowed)
		}
	}
}

// TestAgentContainerHardening runs the agent container's host config (the
// probe image in place of the agent's, exec'd into as an agent's process
// would be) on the real daemon: AF_PACKET, AF_ALG and AF_RXRPC sockets get
// EPERM, a TCP socket works, no-new-privileges is set, the limits are the
// cgroup's. AF_ALG and AF_RXRPC without the profile (same container
// otherwise) show the EPERM is the profile's, not the missing capabilities'.
func TestAgentContainerHardening(t *testing.T) {
	d := cptest.RequireDocker(t)
	net := cptest.NewTestNet(t, d, cptest.NewRunID(), cptest.TestNetOptions{})
	attempts := []string{"socket:17/dgram/0", "socket:38/seqpacket/0", "socket:33/dgram/2", "socket:tcp"}
	run := func(t *testing.T, profile bool) cptest.ProbeResult {
		s := Spec{Project: "p", Agent: "a", Image: net.Image, PidsLimit: 123, Memory: 300 << 20}
		o := createOptions(s, "clawker-test-hardening-"+cptest.NewRunID(), net.Name, nil)
		o.Config.Image, o.Config.Entrypoint, o.Config.Cmd = net.Image, []string{cptest.ProbePath}, []string{"-hold"}
		o.Config.Labels = cptest.TestLabels(net.RunID)
		if !profile {
			o.HostConfig.SecurityOpt = []string{"no-new-privileges:true"}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := d.ContainerCreate(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = d.ContainerRemove(context.Background(), c.ID, client.ContainerRemoveOptions{Force: true})
		})
		if _, err := d.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
			t.Fatal(err)
		}
		in, err := d.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if hc := in.Container.HostConfig; hc.PidsLimit == nil || *hc.PidsLimit != 123 || hc.Memory != 300<<20 {
			t.Errorf("limits as the daemon has them: pids %v memory %d", hc.PidsLimit, hc.Memory)
		}
		return cptest.ExecProbe(t, d, c.ID, "", append([]string{"-timeout", "2s"}, attempts...)...)
	}
	t.Run("profile", func(t *testing.T) {
		res := run(t, true)
		for _, a := range attempts[:3] {
			if o := res.Must(t, a); o.OK || o.Errno != "EPERM" {
				t.Errorf("%s: ok=%v errno=%s, want EPERM", a, o.OK, o.Errno)
			}
		}
		if o := res.Must(t, "socket:tcp"); !o.OK {
			t.Errorf("TCP socket: %+v", o)
		}
	})
	t.Run("without the profile", func(t *testing.T) {
		res := run(t, false)
		for _, a := range attempts[1:3] {
			if o := res.Must(t, a); o.Errno == "EPERM" {
				t.Errorf("%s without the profile: EPERM too: the test proves nothing", a)
			} else {
				t.Logf("%s without the profile: ok=%v errno=%s", a, o.OK, o.Errno)
			}
		}
	})
}
