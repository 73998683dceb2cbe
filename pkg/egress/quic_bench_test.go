package egress

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkQUICFallback: what a QUIC client's first try costs an enforced
// agent. UDP to 443 is refused by the sendmsg4 hook with EPERM at once (no
// packet, no timeout to wait out), so a client that falls back to TCP on a
// send error pays one syscall before its TCP connect, which the kernel
// sends to the proxy. Sub-benchmarks: the UDP send alone, in a cgroup
// without programs (delivered to loopback) and enforced (EPERM); the TCP
// connect alone (redirected to a loopback listener standing in for the
// proxy); and the fallback, the refused send followed by that connect.
func BenchmarkQUICFallback(b *testing.B) {
	requirePrivileged(b)
	dst := &unix.SockaddrInet4{Port: 443, Addr: [4]byte{127, 0, 0, 9}}
	setup := func(b *testing.B, enforced bool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(b, err)
		b.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		cg, cgid := newCgroup(b, "")
		if enforced {
			m := openManager(b, newPinDir(b))
			must(b, m.AttachCgroup(cg))
			must(b, m.Enroll(cgid, Config{
				Proxy:           ln.Addr().(*net.TCPAddr).AddrPort(),
				DNS:             netip.MustParseAddrPort("127.0.0.3:53"),
				EnforceLoopback: true,
			}))
		}
		b.Cleanup(joinCgroup(b, cg))
	}
	udpSend := func(b *testing.B, fd int, wantEPERM bool) {
		err := unix.Sendto(fd, []byte("quic initial"), 0, dst)
		if wantEPERM && !errors.Is(err, unix.EPERM) {
			b.Fatalf("UDP to 127.0.0.9:443 from the enforced cgroup: %v, want EPERM", err)
		}
		if !wantEPERM && err != nil {
			b.Fatal(err)
		}
	}
	tcpConnect := func(b *testing.B) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		must(b, err)
		if err := unix.Connect(fd, dst); err != nil {
			b.Fatal(err)
		}
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	udpSocket := func(b *testing.B) int {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		must(b, err)
		b.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	b.Run("udp443/none", func(b *testing.B) {
		setup(b, false)
		fd := udpSocket(b)
		for b.Loop() {
			udpSend(b, fd, false)
		}
	})
	b.Run("udp443/enforced", func(b *testing.B) {
		setup(b, true)
		fd := udpSocket(b)
		for b.Loop() {
			udpSend(b, fd, true)
		}
	})
	b.Run("tcp443/enforced", func(b *testing.B) {
		setup(b, true)
		for b.Loop() {
			tcpConnect(b)
		}
	})
	b.Run("udp-then-tcp/enforced", func(b *testing.B) {
		setup(b, true)
		fd := udpSocket(b)
		for b.Loop() {
			udpSend(b, fd, true)
			tcpConnect(b)
		}
	})
}
