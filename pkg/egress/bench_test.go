package egress

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// joinCgroup moves the whole test process into cg and returns a function
// that moves it back. Benchmarks run their socket calls in-process.
func joinCgroup(b *testing.B, cg string) func() {
	b.Helper()
	root, err := Cgroup2Mount()
	must(b, err)
	orig := root
	f, err := os.Open("/proc/self/cgroup")
	must(b, err)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			orig = filepath.Join(root, rest)
		}
	}
	f.Close()
	pid := []byte(fmt.Sprint(os.Getpid()))
	must(b, os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0))
	return func() { must(b, os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0)) }
}

type benchMode int

const (
	modeNone     benchMode = iota // cgroup without programs
	modeAttached                  // enrolled, loopback passes, events off
	modeRedirect                  // enrolled, rewritten to the listener, events off
	modeEvents                    // enrolled, rewritten, events on and drained
)

var benchModes = []struct {
	name string
	mode benchMode
}{{"none", modeNone}, {"attached", modeAttached}, {"redirect", modeRedirect}, {"events", modeEvents}}

// benchSetup returns the destination to connect to for the mode.
func benchSetup(b *testing.B, mode benchMode, listener netip.AddrPort) netip.AddrPort {
	cg, cgid := newCgroup(b, "")
	if mode == modeNone {
		b.Cleanup(joinCgroup(b, cg))
		return listener
	}
	m := openManager(b, newPinDir(b))
	must(b, m.AttachCgroup(cg))
	cfg := Config{
		Proxy:           listener,
		DNS:             netip.MustParseAddrPort("127.0.0.3:53"),
		EnforceLoopback: mode != modeAttached,
		Events:          mode == modeEvents,
		EventRate:       1_000_000_000,
		EventBurst:      1_000_000,
	}
	must(b, m.Enroll(cgid, cfg))
	// The redirected UDP connects need a route (UDP has no catch-all).
	must(b, m.SetIdentity(netip.MustParseAddr("127.0.0.9"), 1))
	must(b, m.SyncRoutes([]Route{{Identity: 1, Port: 443, Proto: UDP, ListenerPort: listener.Port()}}))
	if mode == modeEvents {
		ctx, cancel := context.WithCancel(context.Background())
		ch, err := m.Events(ctx)
		must(b, err)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range ch {
			}
		}()
		b.Cleanup(func() { cancel(); <-done })
	}
	b.Cleanup(joinCgroup(b, cg))
	if mode == modeAttached {
		return listener
	}
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.9"), 443)
}

// BenchmarkConnect measures one connect() from inside the cgroup: TCP is
// socket+connect+close (RST, no TIME_WAIT) against a loopback listener;
// UDP re-connects one socket, which runs the connect4 hook each time.
func BenchmarkConnect(b *testing.B) {
	requirePrivileged(b)
	for _, proto := range []string{"tcp", "udp"} {
		for _, bm := range benchModes {
			b.Run(proto+"/"+bm.name, func(b *testing.B) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				must(b, err)
				defer ln.Close()
				go func() {
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						c.Close()
					}
				}()
				dst := benchSetup(b, bm.mode, ln.Addr().(*net.TCPAddr).AddrPort())
				sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
				if proto == "udp" {
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
					must(b, err)
					defer unix.Close(fd)
					b.ResetTimer()
					for range b.N {
						if err := unix.Connect(fd, sa); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				linger := &unix.Linger{Onoff: 1, Linger: 0}
				b.ResetTimer()
				for range b.N {
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						b.Fatal(err)
					}
					if err := unix.Connect(fd, sa); err != nil {
						b.Fatal(err)
					}
					_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
					unix.Close(fd)
				}
			})
		}
	}
}

// BenchmarkRingbufDrain fills the ring with denied UDP sends (timer
// stopped), then times draining it: through Events (decode + channel) and
// with a bare ringbuf.Reader.ReadInto loop. One op is one event.
func BenchmarkRingbufDrain(b *testing.B) {
	requirePrivileged(b)
	for _, reader := range []string{"events-chan", "raw-readinto"} {
		b.Run(reader, func(b *testing.B) {
			cg, cgid := newCgroup(b, "")
			m := openManager(b, newPinDir(b))
			must(b, m.AttachCgroup(cg))
			must(b, m.Enroll(cgid, Config{
				Proxy:           netip.MustParseAddrPort("127.0.0.2:3128"),
				DNS:             netip.MustParseAddrPort("127.0.0.3:53"),
				EnforceLoopback: true,
				Events:          true,
				EventRate:       1_000_000_000,
				EventBurst:      1_000_000,
			}))
			restore := joinCgroup(b, cg)
			defer restore()
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			must(b, err)
			defer unix.Close(fd)
			sa := &unix.SockaddrInet4{Port: 9999, Addr: [4]byte{127, 0, 0, 9}}
			capacity := int(m.objs.Events.MaxEntries())/(EventSize+8) - 16

			b.ResetTimer()
			b.StopTimer()
			var drained int
			for drained < b.N {
				n := min(capacity, b.N-drained)
				for range n {
					_ = unix.Sendto(fd, []byte("x"), 0, sa) // EPERM, one event
				}
				b.StartTimer()
				if reader == "raw-readinto" {
					rd, err := ringbuf.NewReader(m.objs.Events)
					must(b, err)
					var rec ringbuf.Record
					for range n {
						if err := rd.ReadInto(&rec); err != nil {
							b.Fatal(err)
						}
					}
					rd.Close()
				} else {
					ctx, cancel := context.WithCancel(context.Background())
					ch, err := m.Events(ctx)
					must(b, err)
					timeout := time.NewTimer(10 * time.Second)
					for range n {
						select {
						case <-ch:
						case <-timeout.C:
							b.Fatal("ring ran dry")
						}
					}
					timeout.Stop()
					cancel()
					for range ch {
					}
				}
				b.StopTimer()
				drained += n
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkSyncRoutes10k measures one atomic swap of a 10,000-route set.
func BenchmarkSyncRoutes10k(b *testing.B) {
	requirePrivileged(b)
	m := openManager(b, newPinDir(b))
	routes := make([]Route, 10_000)
	for i := range routes {
		routes[i] = Route{Identity: uint32(i / 100), Port: uint16(1 + i%100), Proto: TCP, ListenerPort: 10000}
	}
	b.ResetTimer()
	for range b.N {
		must(b, m.SyncRoutes(routes))
	}
}

// prevObject is bpf/egress_bpfel.o as it was before the allow-list, the
// ancestry walk and the backstop (commit 85930b2), for BenchmarkHookCost.
const prevObject = "testdata/egress_prev_bpfel.o"

// attachPrev loads the previous build's programs, attaches its connect4
// and sendmsg4 to cg and enrolls cgid with cfg (its agent_cfg is a prefix
// of this build's).
func attachPrev(b *testing.B, cg string, cgid uint64, cfg Config) {
	spec, err := ebpf.LoadCollectionSpec(prevObject)
	must(b, err)
	coll, err := ebpf.NewCollection(spec)
	must(b, err)
	b.Cleanup(func() { coll.Close() })
	for name, typ := range map[string]ebpf.AttachType{"connect4": ebpf.AttachCGroupInet4Connect, "sendmsg4": ebpf.AttachCGroupUDP4Sendmsg} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: typ, Program: coll.Programs[name]})
		must(b, err)
		b.Cleanup(func() { l.Close() })
	}
	v, err := cfg.encode()
	must(b, err)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&v)), unsafe.Sizeof(v))
	m := coll.Maps["cgroup_cfg"]
	must(b, m.Put(cgid, raw[:m.ValueSize()]))
}

// BenchmarkHookCost compares, in one run, what connect() and sendto() of
// an enrolled task cost with the previous build's programs ("prev") and
// this build's ("new": the task in the enrolled cgroup; "new-child": in a
// cgroup below it, which walks the ancestors), against no programs
// ("none"). UDP connect runs connect4 each time, sendto runs sendmsg4;
// both pass on the loopback exemption, the same verdict in both builds.
func BenchmarkHookCost(b *testing.B) {
	requirePrivileged(b)
	for _, op := range []string{"udp-connect", "udp-sendto"} {
		for _, mode := range []string{"none", "prev", "new", "new-child"} {
			b.Run(op+"/"+mode, func(b *testing.B) {
				pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
				must(b, err)
				defer pc.Close()
				dst := pc.LocalAddr().(*net.UDPAddr).AddrPort()
				cg, cgid := newCgroup(b, "")
				cfg := Config{Proxy: netip.MustParseAddrPort("127.0.0.2:3128"), DNS: netip.MustParseAddrPort("127.0.0.3:53")}
				join := cg
				switch mode {
				case "prev":
					attachPrev(b, cg, cgid, cfg)
				case "new", "new-child":
					m := openManager(b, newPinDir(b))
					must(b, m.AttachCgroup(cg))
					must(b, m.Enroll(cgid, cfg))
					if mode == "new-child" {
						join, _ = newCgroup(b, cg)
					}
				}
				b.Cleanup(joinCgroup(b, join))
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				must(b, err)
				defer unix.Close(fd)
				sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
				msg := []byte("x")
				b.ResetTimer()
				for range b.N {
					if op == "udp-connect" {
						err = unix.Connect(fd, sa)
					} else {
						err = unix.Sendto(fd, msg, 0, sa)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
