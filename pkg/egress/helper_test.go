package egress

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clawker/clawker-cp/pkg/testkit"
)

// The helper process: the test binary re-executed with helperEnv set joins
// a cgroup, optionally drops to another uid, performs one socket operation
// and prints a helperResult as JSON.
const helperEnv = "CLAWKER_EGRESS_HELPER"

type helperOp struct {
	Cgroup string        `json:"cgroup"`
	UID    int           `json:"uid"`
	Op     string        `json:"op"` // tcp, udp-sendto, udp-connect, raw, udp-burst, udp-connect-loop, probe-loop
	Addr   string        `json:"addr,omitempty"`
	Token  string        `json:"token,omitempty"`
	Reply  bool          `json:"reply,omitempty"` // wait for a UDP reply
	N      int           `json:"n,omitempty"`
	For    time.Duration `json:"for,omitempty"`
	Probes []probe       `json:"probes,omitempty"` // probe-loop
}

// probe is one operation of a probe-loop: "tcp" (connect, outcome: the
// peer getpeername reports, or the errno) or "udp-sendto" (outcome "sent" or
// the errno).
type probe struct {
	Op   string `json:"op"`
	Addr string `json:"addr"`
}

type helperResult struct {
	Errno int    `json:"errno"` // of the operation's first failing syscall
	Err   string `json:"err,omitempty"`
	Peer  string `json:"peer,omitempty"` // getpeername after connect
	From  string `json:"from,omitempty"` // source of the UDP reply
	Reply string `json:"reply,omitempty"`
	Count int    `json:"count,omitempty"`
	Fails int    `json:"fails,omitempty"`
	PID   int    `json:"pid"`
	// probe-loop: how often each "<probe index> <outcome>" was seen.
	Outcomes map[string]int `json:"outcomes,omitempty"`
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelper(spec))
	}
	// Leaked descriptors fail the run. Open the netpoller's own first.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	before := openFDs()
	code := m.Run()
	if code == 0 {
		var after []string
		for range 50 { // closed listeners and readers settle asynchronously
			if after = openFDs(); len(after) <= len(before) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(after) > len(before) {
			fmt.Fprintf(os.Stderr, "leaked file descriptors: %d open before the tests, %d after:\n%s\n",
				len(before), len(after), strings.Join(after, "\n"))
			code = 1
		}
	}
	os.Exit(code)
}

func openFDs() []string {
	entries, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out = append(out, e.Name()+" -> "+target)
	}
	return out
}

func runHelper(spec string) int {
	var op helperOp
	if err := json.Unmarshal([]byte(spec), &op); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	if err := os.WriteFile(filepath.Join(op.Cgroup, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
		fmt.Fprintln(os.Stderr, "helper: join cgroup:", err)
		return 2
	}
	if op.UID != 0 {
		if err := syscall.Setgroups(nil); err != nil {
			fmt.Fprintln(os.Stderr, "helper: setgroups:", err)
			return 2
		}
		if err := syscall.Setgid(op.UID); err != nil {
			fmt.Fprintln(os.Stderr, "helper: setgid:", err)
			return 2
		}
		if err := syscall.Setuid(op.UID); err != nil {
			fmt.Fprintln(os.Stderr, "helper: setuid:", err)
			return 2
		}
	}
	res := helperDo(op)
	res.PID = os.Getpid()
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

func fail(res *helperResult, err error) helperResult {
	var errno unix.Errno
	if errors.As(err, &errno) {
		res.Errno = int(errno)
	} else {
		res.Errno = -1
	}
	res.Err = err.Error()
	return *res
}

func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return fmt.Sprint(sa)
}

func helperDo(op helperOp) helperResult {
	var res helperResult
	var ap netip.AddrPort
	if op.Addr != "" {
		var err error
		if ap, err = netip.ParseAddrPort(op.Addr); err != nil {
			return fail(&res, err)
		}
	}
	family, sa := sockaddr(ap)
	switch op.Op {
	case "raw":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			return fail(&res, err)
		}
		unix.Close(fd)
		return res

	case "tcp":
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(&res, err)
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, sa); err != nil {
			return fail(&res, err)
		}
		peer, err := unix.Getpeername(fd)
		if err != nil {
			return fail(&res, err)
		}
		res.Peer = sockaddrString(peer)
		if _, err := unix.Write(fd, []byte(op.Token)); err != nil {
			return fail(&res, err)
		}
		return res

	case "udp-sendto", "udp-connect":
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(&res, err)
		}
		defer unix.Close(fd)
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 400_000})
		if op.Op == "udp-connect" {
			if err := unix.Connect(fd, sa); err != nil {
				return fail(&res, err)
			}
			peer, err := unix.Getpeername(fd)
			if err != nil {
				return fail(&res, err)
			}
			res.Peer = sockaddrString(peer)
			if _, err := unix.Write(fd, []byte(op.Token)); err != nil {
				return fail(&res, err)
			}
		} else if err := unix.Sendto(fd, []byte(op.Token), 0, sa); err != nil {
			return fail(&res, err)
		}
		if !op.Reply {
			return res
		}
		buf := make([]byte, 512)
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fail(&res, err)
		}
		res.Reply = string(buf[:n])
		if from != nil {
			res.From = sockaddrString(from)
		}
		return res

	case "udp-burst":
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(&res, err)
		}
		defer unix.Close(fd)
		for i := 0; i < op.N; i++ {
			if err := unix.Sendto(fd, []byte("x"), 0, sa); err != nil {
				res.Fails++
			}
			res.Count++
		}
		return res

	case "udp-connect-loop":
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(&res, err)
		}
		defer unix.Close(fd)
		deadline := time.Now().Add(op.For)
		for time.Now().Before(deadline) {
			for i := 0; i < 100; i++ {
				if err := unix.Connect(fd, sa); err != nil {
					res.Fails++
					if res.Err == "" {
						res.Err = err.Error()
					}
				}
				res.Count++
			}
		}
		return res

	case "probe-loop":
		return probeLoop(op)
	case "escape":
		return escape(op)
	case "cut-victim":
		return cutVictim(op)
	}
	return fail(&res, fmt.Errorf("unknown op %q", op.Op))
}

// probeLoop runs op.Probes round after round, printing "ready" after the
// first round, until stdin is closed.
func probeLoop(op helperOp) helperResult {
	res := helperResult{Outcomes: map[string]int{}}
	var stop atomic.Bool
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop.Store(true)
	}()
	addrs := make([]netip.AddrPort, len(op.Probes))
	for i, p := range op.Probes {
		var err error
		if addrs[i], err = netip.ParseAddrPort(p.Addr); err != nil {
			return fail(&res, err)
		}
	}
	for !stop.Load() {
		for i, p := range op.Probes {
			res.Outcomes[fmt.Sprintf("%d %s", i, probeOnce(p.Op, addrs[i]))]++
		}
		if res.Count++; res.Count == 1 {
			fmt.Println("ready")
		}
	}
	return res
}

func probeOnce(op string, ap netip.AddrPort) string {
	family, sa := sockaddr(ap)
	typ := unix.SOCK_STREAM
	if op == "udp-sendto" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "socket " + errnoOf(err)
	}
	defer unix.Close(fd)
	if op == "udp-sendto" {
		if err := unix.Sendto(fd, []byte("probe"), 0, sa); err != nil {
			return errnoOf(err)
		}
		return "sent"
	}
	// Reset on close: thousands of connections must not sit in TIME_WAIT.
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	if err := unix.Connect(fd, sa); err != nil {
		return errnoOf(err)
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return "getpeername " + errnoOf(err)
	}
	return "peer " + sockaddrString(peer)
}

func errnoOf(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errnoName(int(errno))
	}
	return err.Error()
}

// runHelper runs op in a helper process inside op.Cgroup.
func runInCgroup(t testing.TB, op helperOp) helperResult {
	t.Helper()
	spec, err := json.Marshal(op)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// atexit_sleep_ms: a -race helper would otherwise linger 1 s at exit.
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec), "GORACE=atexit_sleep_ms=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %+v: %v: %s", op, err, stderr.String())
	}
	var res helperResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("helper %+v: output %q: %v", op, out, err)
	}
	return res
}

// loopInCgroup starts a probe-loop helper in op.Cgroup and returns once it
// has run one round; stop ends it and returns what it saw.
func loopInCgroup(t testing.TB, op helperOp) (stop func() helperResult) {
	t.Helper()
	op.Op = "probe-loop"
	spec, err := json.Marshal(op)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec), "GORACE=atexit_sleep_ms=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var res helperResult
	var runErr error
	finish := func() {
		once.Do(func() {
			stdin.Close()
			rest, err := io.ReadAll(stdout)
			if werr := cmd.Wait(); werr != nil {
				runErr = fmt.Errorf("%v: %s", werr, stderr.String())
				return
			}
			if err == nil {
				err = json.Unmarshal(rest, &res)
			}
			if err != nil {
				runErr = fmt.Errorf("output %q: %v", rest, err)
			}
		})
	}
	t.Cleanup(finish) // never leave the helper running
	br := bufio.NewReader(stdout)
	if line, err := br.ReadString('\n'); err != nil || line != "ready\n" {
		finish()
		t.Fatalf("probe loop did not start: %q %v %v", line, err, runErr)
	}
	stdout = io.NopCloser(br)
	return func() helperResult {
		t.Helper()
		finish()
		if runErr != nil {
			t.Fatalf("probe loop: %v", runErr)
		}
		return res
	}
}

// requirePrivileged skips (or, under CI=true, fails) a test that needs
// root, cgroup v2 and BTF.
func requirePrivileged(t testing.TB) {
	t.Helper()
	var reason string
	switch {
	case os.Geteuid() != 0:
		reason = "needs root"
	case func() bool { _, err := os.Stat("/sys/kernel/btf/vmlinux"); return err != nil }():
		reason = "needs kernel BTF (/sys/kernel/btf/vmlinux)"
	case func() bool { _, err := Cgroup2Mount(); return err != nil }():
		reason = "needs a cgroup v2 mount"
	}
	if reason == "" {
		return
	}
	testkit.SkipOrFail(t, reason)
}

func randomSuffix(t testing.TB) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newCgroup makes a fresh cgroup under the v2 mount (or under parent when
// given), removed in t.Cleanup.
func newCgroup(t testing.TB, parent string) (string, uint64) {
	t.Helper()
	if parent == "" {
		root, err := Cgroup2Mount()
		if err != nil {
			t.Fatal(err)
		}
		parent = root
	}
	dir := filepath.Join(parent, "clawker-test-"+randomSuffix(t))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) })
	id, err := CgroupID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, id
}

func removeCgroup(t testing.TB, dir string) {
	// Helpers have exited, but a dying task may linger for a moment.
	var err error
	for i := 0; i < 50; i++ {
		// Children first (tests may nest cgroups).
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() {
				removeCgroup(t, filepath.Join(dir, e.Name()))
			}
		}
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("remove cgroup %s: %v", dir, err)
}

// newPinDir returns a pin dir on bpffs that t.Cleanup flushes and removes.
func newPinDir(t testing.TB) string {
	t.Helper()
	if err := EnsureBPFFS(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(BPFFSRoot, "clawker-test-"+randomSuffix(t))
	t.Cleanup(func() {
		if err := FlushPins(dir); err != nil {
			t.Errorf("flush %s: %v", dir, err)
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

func openManager(t testing.TB, pinDir string) *Manager {
	t.Helper()
	m, err := Open(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// record is what a recording listener saw.
type record struct {
	Peer  string // the connecting or sending side
	Local string // the address that received it
	Data  string
}

// recorder is a TCP or UDP listener that records what reached it; UDP
// recorders answer "dns:"+payload.
type recorder struct {
	Addr netip.AddrPort
	mu   sync.Mutex
	got  []record
	cond chan struct{}
}

func (r *recorder) add(rec record) {
	r.mu.Lock()
	r.got = append(r.got, rec)
	r.mu.Unlock()
	select {
	case r.cond <- struct{}{}:
	default:
	}
}

// wait returns the record carrying data, waiting up to d.
func (r *recorder) wait(data string, d time.Duration) (record, bool) {
	deadline := time.Now().Add(d)
	for {
		r.mu.Lock()
		for _, rec := range r.got {
			if rec.Data == data {
				r.mu.Unlock()
				return rec, true
			}
		}
		r.mu.Unlock()
		left := time.Until(deadline)
		if left <= 0 {
			return record{}, false
		}
		select {
		case <-r.cond:
		case <-time.After(min(left, 20*time.Millisecond)):
		}
	}
}

func (r *recorder) has(data string) bool {
	_, ok := r.wait(data, 0)
	return ok
}

func newTCPRecorder(t testing.TB, addr string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &recorder{Addr: ln.Addr().(*net.TCPAddr).AddrPort(), cond: make(chan struct{}, 1)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 256)
				var data []byte
				for {
					n, err := c.Read(buf)
					data = append(data, buf[:n]...)
					if err != nil {
						break
					}
				}
				r.add(record{Peer: c.RemoteAddr().String(), Local: c.LocalAddr().String(), Data: string(data)})
			}()
		}
	}()
	return r
}

func newUDPRecorder(t testing.TB, addr string) *recorder {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	r := &recorder{Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), cond: make(chan struct{}, 1)}
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			data := string(buf[:n])
			_, _ = pc.WriteTo([]byte("dns:"+data), from)
			r.add(record{Peer: from.String(), Local: pc.LocalAddr().String(), Data: data})
		}
	}()
	return r
}

// newDualRecorder listens on the same port with TCP and UDP.
func newDualRecorder(t testing.TB, ip string) (tcp, udp *recorder) {
	t.Helper()
	for i := 0; i < 20; i++ {
		tcp = newTCPRecorder(t, ip+":0")
		pc, err := net.ListenPacket("udp", tcp.Addr.String())
		if err != nil {
			continue
		}
		pc.Close()
		return tcp, newUDPRecorder(t, tcp.Addr.String())
	}
	t.Fatal("no port free for both TCP and UDP")
	return nil, nil
}

func errnoName(e int) string {
	if e == 0 {
		return "ok"
	}
	if e < 0 {
		return "error"
	}
	return strings.ToUpper(unix.ErrnoName(unix.Errno(e)))
}

func waitStdinEOF() { _, _ = io.Copy(io.Discard, os.Stdin) }

func monoNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// escape makes, before the cgroup is enrolled, what the sock_addr hooks
// never see again: a raw ICMP socket (needs root) and a UDP socket
// connected to op.Addr. Once stdin closes (the test enrolled the cgroup)
// it sends on both: outcomes "raw" and "udp".
func escape(op helperOp) helperResult {
	res := helperResult{Outcomes: map[string]int{}}
	ap, err := netip.ParseAddrPort(op.Addr)
	if err != nil {
		return fail(&res, err)
	}
	raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return fail(&res, err)
	}
	defer unix.Close(raw)
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(&res, err)
	}
	defer unix.Close(udp)
	_, sa := sockaddr(ap)
	if err := unix.Connect(udp, sa); err != nil {
		return fail(&res, err)
	}
	fmt.Println("ready")
	waitStdinEOF()
	echo := []byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0} // ICMP echo request, checksum precomputed
	err = unix.Sendto(raw, echo, 0, &unix.SockaddrInet4{Addr: ap.Addr().As4()})
	res.Outcomes["raw "+errnoOf(err)]++
	_, err = unix.Write(udp, []byte(op.Token))
	res.Outcomes["udp "+errnoOf(err)]++
	return res
}

// cutVictim connects one socket per probe ("tcp" or "udp" to Addr), says
// "ready", and reports every socket whose blocking read fails as
// "cut <index> <errno> <CLOCK_MONOTONIC ns>". Once stdin closes, each
// socket still standing is checked (TCP: a write; UDP: getpeername):
// outcomes "<index> alive" or "<index> cut <errno>".
func cutVictim(op helperOp) helperResult {
	res := helperResult{Outcomes: map[string]int{}}
	var mu sync.Mutex
	cut := map[int]string{}
	fds := make([]int, len(op.Probes))
	for i, p := range op.Probes {
		ap, err := netip.ParseAddrPort(p.Addr)
		if err != nil {
			return fail(&res, err)
		}
		family, sa := sockaddr(ap)
		typ := unix.SOCK_STREAM
		if p.Op == "udp" {
			typ = unix.SOCK_DGRAM
		}
		fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(&res, err)
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, sa); err != nil {
			return fail(&res, fmt.Errorf("probe %d: %w", i, err))
		}
		fds[i] = fd
	}
	for i, fd := range fds {
		go func() {
			buf := make([]byte, 64)
			_, err := unix.Read(fd, buf)
			at := monoNow()
			mu.Lock()
			cut[i] = errnoOf(err)
			fmt.Printf("cut %d %s %d\n", i, cut[i], at)
			mu.Unlock()
		}()
	}
	fmt.Println("ready")
	waitStdinEOF()
	mu.Lock()
	defer mu.Unlock()
	for i, fd := range fds {
		if e, ok := cut[i]; ok {
			res.Outcomes[fmt.Sprintf("%d cut %s", i, e)]++
			continue
		}
		var err error
		if op.Probes[i].Op == "udp" {
			_, err = unix.Getpeername(fd)
		} else {
			_, err = unix.Write(fd, []byte("alive"))
		}
		if err != nil {
			res.Outcomes[fmt.Sprintf("%d cut %s", i, errnoOf(err))]++
		} else {
			res.Outcomes[fmt.Sprintf("%d alive", i)]++
		}
	}
	return res
}

// helperProc is a helper running in the background: Lines carries what it
// prints before its result, Finish closes its stdin and returns the result.
type helperProc struct {
	Lines  chan string
	finish func() (helperResult, error)
}

func (h *helperProc) Finish(t testing.TB) helperResult {
	t.Helper()
	res, err := h.finish()
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// startInCgroup starts op in a helper and returns once it printed "ready".
func startInCgroup(t testing.TB, op helperOp) *helperProc {
	t.Helper()
	spec, err := json.Marshal(op)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec), "GORACE=atexit_sleep_ms=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helperProc{Lines: make(chan string, 64)}
	resc := make(chan []byte, 1)
	ready := make(chan bool, 1)
	go func() {
		br := bufio.NewReader(stdout)
		first := true
		for {
			line, err := br.ReadString('\n')
			if strings.HasPrefix(line, "{") {
				if first {
					ready <- false
				}
				resc <- []byte(line)
				return
			}
			if first {
				first = false
				ready <- line == "ready\n"
				if err == nil {
					continue
				}
			}
			if err != nil {
				close(resc)
				return
			}
			h.Lines <- strings.TrimSpace(line)
		}
	}()
	var once sync.Once
	var res helperResult
	var runErr error
	h.finish = func() (helperResult, error) {
		once.Do(func() {
			stdin.Close()
			out, ok := <-resc
			if werr := cmd.Wait(); werr != nil {
				runErr = fmt.Errorf("helper %s: %v: %s", op.Op, werr, stderr.String())
				return
			}
			if !ok {
				runErr = fmt.Errorf("helper %s printed no result: %s", op.Op, stderr.String())
				return
			}
			runErr = json.Unmarshal(out, &res)
		})
		return res, runErr
	}
	t.Cleanup(func() { _, _ = h.finish() })
	if !<-ready {
		_, err := h.finish()
		t.Fatalf("helper %s did not start: %v %+v", op.Op, err, res)
	}
	return h
}
