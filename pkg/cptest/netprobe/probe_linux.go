package netprobe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The attempts use raw syscalls rather than package net: net picks the
// socket family from the address (a v4-mapped address gets an AF_INET
// socket) and hides which syscall failed, and both matter to the eBPF
// hooks under test (connect4 vs connect6, connect vs sendmsg).

func runAttempt(a Attempt, seq int64, timeout time.Duration) Outcome {
	var o Outcome
	deadline := time.Now().Add(timeout)
	switch a.Kind {
	case "tcp":
		tcpAttempt(&o, a, seq, deadline, timeout)
	case "udp":
		udpAttempt(&o, a, seq, deadline, timeout)
	case "dns":
		dnsUDPAttempt(&o, a, deadline, timeout)
	case "dnstcp":
		dnsTCPAttempt(&o, a, deadline, timeout)
	case "http", "https":
		httpAttempt(&o, a, deadline)
	case "socket":
		fd, err := unix.Socket(a.Family, a.Type|unix.SOCK_CLOEXEC, a.Proto)
		if err != nil {
			o.fail("socket", err)
			break
		}
		_ = unix.Close(fd)
		o.OK = true
	default:
		o.fail("parse", fmt.Errorf("unknown kind %q", a.Kind))
	}
	return o
}

func errnoName(err error) (name string, timeout bool) {
	var en unix.Errno
	if !errors.As(err, &en) {
		return "", false
	}
	name = unix.ErrnoName(en)
	if name == "" {
		name = "errno " + strconv.Itoa(int(en))
	}
	return name, en == unix.ETIMEDOUT
}

func sockaddrOf(ap netip.AddrPort) (int, unix.Sockaddr) {
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func addrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return ""
}

func localAddr(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return ""
	}
	return addrString(sa)
}

// openSocket is a non-blocking socket of fam; an AF_INET6 one accepts
// v4-mapped destinations (IPV6_V6ONLY off), as dual-stack clients set it.
func openSocket(fam, typ int) (int, error) {
	fd, err := unix.Socket(fam, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if fam == unix.AF_INET6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	return fd, nil
}

// waitFD polls fd for events until deadline.
func waitFD(fd int, events int16, deadline time.Time, timeout time.Duration) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return timeoutError{timeout}
		}
		ms := int(left / time.Millisecond)
		if ms == 0 {
			ms = 1
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// connectFD connects the non-blocking fd, waiting until deadline.
func connectFD(fd int, sa unix.Sockaddr, deadline time.Time, timeout time.Duration) error {
	err := unix.Connect(fd, sa)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		return err
	}
	if err := waitFD(fd, unix.POLLOUT, deadline, timeout); err != nil {
		return err
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soErr != 0 {
		return unix.Errno(soErr)
	}
	return nil
}

func writeAll(fd int, b []byte, deadline time.Time, timeout time.Duration) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if err := waitFD(fd, unix.POLLOUT, deadline, timeout); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// readFD reads once, waiting for data until deadline; 0 bytes is io.EOF.
func readFD(fd int, buf []byte, deadline time.Time, timeout time.Duration) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if err := waitFD(fd, unix.POLLIN, deadline, timeout); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// readLineFD reads up to a newline, MaxData bytes or EOF.
func readLineFD(fd int, deadline time.Time, timeout time.Duration) (string, error) {
	var buf []byte
	tmp := make([]byte, MaxData)
	for {
		n, err := readFD(fd, tmp[:MaxData-len(buf)], deadline, timeout)
		buf = append(buf, tmp[:n]...)
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			return cleanLine(buf[:i]), nil
		}
		if err != nil {
			return cleanLine(buf), err
		}
		if len(buf) >= MaxData {
			return cleanLine(buf), nil
		}
	}
}

func readFullFD(fd int, n int, deadline time.Time, timeout time.Duration) ([]byte, error) {
	buf := make([]byte, n)
	for got := 0; got < n; {
		m, err := readFD(fd, buf[got:], deadline, timeout)
		if err != nil {
			return buf[:got], err
		}
		got += m
	}
	return buf, nil
}

// recvFD receives one datagram, waiting until deadline.
func recvFD(fd int, deadline time.Time, timeout time.Duration) ([]byte, unix.Sockaddr, error) {
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if err := waitFD(fd, unix.POLLIN, deadline, timeout); err != nil {
				return nil, nil, err
			}
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		return buf[:n], from, nil
	}
}

// dialTCP opens and connects a TCP socket, filling Connected, Local and
// Remote; it returns -1 after recording a failure.
func dialTCP(o *Outcome, target netip.AddrPort, deadline time.Time, timeout time.Duration) int {
	fam, sa := sockaddrOf(target)
	fd, err := openSocket(fam, unix.SOCK_STREAM)
	if err != nil {
		o.fail("socket", err)
		return -1
	}
	if err := connectFD(fd, sa, deadline, timeout); err != nil {
		_ = unix.Close(fd)
		o.fail("connect", err)
		return -1
	}
	o.Connected = true
	o.Local = localAddr(fd)
	if peer, err := unix.Getpeername(fd); err == nil {
		o.Remote = addrString(peer)
	}
	return fd
}

func tcpAttempt(o *Outcome, a Attempt, seq int64, deadline time.Time, timeout time.Duration) {
	fd := dialTCP(o, a.Target, deadline, timeout)
	if fd < 0 {
		return
	}
	defer unix.Close(fd)
	if !a.NoSend {
		line := a.sendLine(seq)
		if err := writeAll(fd, []byte(line+"\n"), deadline, timeout); err != nil {
			o.fail("write", err)
			return
		}
		o.Sent = line
	}
	if a.NoRead {
		o.OK = true
		return
	}
	reply, err := readLineFD(fd, deadline, timeout)
	o.Reply = reply
	if err != nil && !(errors.Is(err, io.EOF) && reply != "") {
		o.fail("read", err)
		return
	}
	o.OK = true
}

// sendDatagram opens a UDP socket and sends payload to target: sendto, or
// connect and write. It returns -1 after recording a failure.
func sendDatagram(o *Outcome, a Attempt, payload []byte) int {
	fam, sa := sockaddrOf(a.Target)
	fd, err := openSocket(fam, unix.SOCK_DGRAM)
	if err != nil {
		o.fail("socket", err)
		return -1
	}
	if a.Connect {
		if err := unix.Connect(fd, sa); err != nil {
			_ = unix.Close(fd)
			o.fail("connect", err)
			return -1
		}
		o.Connected = true
		if _, err := unix.Write(fd, payload); err != nil {
			_ = unix.Close(fd)
			o.fail("write", err)
			return -1
		}
	} else if err := unix.Sendto(fd, payload, 0, sa); err != nil {
		_ = unix.Close(fd)
		o.fail("sendto", err)
		return -1
	}
	o.Local = localAddr(fd)
	return fd
}

func udpAttempt(o *Outcome, a Attempt, seq int64, deadline time.Time, timeout time.Duration) {
	line := a.sendLine(seq)
	fd := sendDatagram(o, a, []byte(line+"\n"))
	if fd < 0 {
		return
	}
	defer unix.Close(fd)
	o.Sent = line
	if a.NoRead {
		o.OK = true
		return
	}
	b, from, err := recvFD(fd, deadline, timeout)
	if err != nil {
		o.fail("recvfrom", err)
		return
	}
	o.Remote = addrString(from)
	o.Reply = firstLine(b)
	o.OK = true
}

func dnsQuery(o *Outcome, a Attempt) ([]byte, uint16, bool) {
	id := uint16(rand.N(1 << 16))
	q, err := BuildQuery(id, a.Name, a.QType)
	if err != nil {
		o.fail("query", err)
		return nil, 0, false
	}
	o.Sent = TypeName(a.QType) + " " + a.Name
	return q, id, true
}

// dnsResult fills the outcome from a DNS answer to the query id.
func dnsResult(o *Outcome, msg []byte, id uint16) {
	resp, err := ParseResponse(msg)
	if err != nil {
		o.fail("parse", err)
		return
	}
	if resp.ID != id {
		o.fail("parse", fmt.Errorf("answer id %d, query id %d", resp.ID, id))
		return
	}
	o.RCode = resp.RCode
	for _, ip := range resp.Answers {
		o.Answers = append(o.Answers, ip.String())
	}
	o.Reply = strings.Join(o.Answers, ",")
	o.OK = true
}

func dnsUDPAttempt(o *Outcome, a Attempt, deadline time.Time, timeout time.Duration) {
	q, id, ok := dnsQuery(o, a)
	if !ok {
		return
	}
	sent := o.Sent
	fd := sendDatagram(o, a, q)
	if fd < 0 {
		return
	}
	defer unix.Close(fd)
	o.Sent = sent
	if a.NoRead {
		o.OK = true
		return
	}
	b, from, err := recvFD(fd, deadline, timeout)
	if err != nil {
		o.fail("recvfrom", err)
		return
	}
	o.Remote = addrString(from)
	dnsResult(o, b, id)
}

func dnsTCPAttempt(o *Outcome, a Attempt, deadline time.Time, timeout time.Duration) {
	q, id, ok := dnsQuery(o, a)
	if !ok {
		return
	}
	fd := dialTCP(o, a.Target, deadline, timeout)
	if fd < 0 {
		return
	}
	defer unix.Close(fd)
	if err := writeAll(fd, append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...), deadline, timeout); err != nil {
		o.fail("write", err)
		return
	}
	if a.NoRead {
		o.OK = true
		return
	}
	hdr, err := readFullFD(fd, 2, deadline, timeout)
	if err != nil {
		o.fail("read", err)
		return
	}
	msg, err := readFullFD(fd, int(binary.BigEndian.Uint16(hdr)), deadline, timeout)
	if err != nil {
		o.fail("read", err)
		return
	}
	dnsResult(o, msg, id)
}

// runAsUser runs a in a child probe with a's uid and gid (setgroups to
// none, then setgid, then setuid: root with CAP_SETUID and CAP_SETGID is
// needed) and returns the child's outcome.
func runAsUser(ctx context.Context, a Attempt, seq int64, timeout time.Duration) Outcome {
	o := Outcome{UID: os.Getuid(), GID: os.Getgid()}
	exe, err := os.Executable()
	if err != nil {
		o.fail("executable", err)
		return o
	}
	cctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, exe, "-child", "-seq", strconv.FormatInt(seq, 10),
		"-timeout", timeout.String(), "--", a.childSpec)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(a.UID), Gid: uint32(a.GID)}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil && stdout.Len() == 0 {
		// A refused setuid/setgid/setgroups fails the fork/exec itself.
		o.fail("setuid", err)
		if s := strings.TrimSpace(stderr.String()); s != "" {
			o.Error += ": " + s
		}
		return o
	}
	for _, c := range ParseOutcomes(stdout.String()) {
		if c.Kind != "done" {
			return c
		}
	}
	o.fail("child", fmt.Errorf("no outcome from the child: %q %q", stdout.String(), stderr.String()))
	return o
}
