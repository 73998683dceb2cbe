package netprobe

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// StandinConfig is what a stand-in listens on and answers. Args renders it
// as the flags of cmd/standin; ParseStandinFlags reads them back.
type StandinConfig struct {
	// Name is in its banner ("standin <name> <port>") and its records.
	Name string
	// Bind is the address every listener binds (zero: 0.0.0.0).
	Bind netip.Addr
	// TCPPorts and UDPPorts answer with the banner (0: a free port).
	TCPPorts []int
	UDPPorts []int
	// DNSPort serves DNS over UDP and TCP (0: no DNS; -1: free ports, for
	// tests). A TCP connection to it that does not start with a DNS message
	// gets the banner.
	DNSPort int
	// DNSAnswer is the address every A query is answered with (zero:
	// DefaultDNSAnswer), unless DNSRecords names the queried name (lower
	// case, no final dot). An AAAA query gets the IPv6 addresses named
	// there, usually none.
	DNSAnswer  netip.Addr
	DNSRecords map[string]netip.Addr
	// ReadTimeout bounds how long a TCP connection is read for its first
	// line (zero: 2s); the record is written when the line, EOF or this
	// deadline comes.
	ReadTimeout time.Duration
}

// Args are the command-line flags of cmd/standin that stand for c.
func (c StandinConfig) Args() []string {
	args := []string{"-name", c.Name}
	if c.Bind.IsValid() {
		args = append(args, "-bind", c.Bind.String())
	}
	if len(c.TCPPorts) > 0 {
		args = append(args, "-tcp", joinInts(c.TCPPorts))
	}
	if len(c.UDPPorts) > 0 {
		args = append(args, "-udp", joinInts(c.UDPPorts))
	}
	args = append(args, "-dns-port", strconv.Itoa(c.DNSPort))
	if c.DNSAnswer.IsValid() {
		args = append(args, "-dns-answer", c.DNSAnswer.String())
	}
	names := make([]string, 0, len(c.DNSRecords))
	for n := range c.DNSRecords {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		args = append(args, "-dns-record", n+"="+c.DNSRecords[n].String())
	}
	if c.ReadTimeout > 0 {
		args = append(args, "-read-timeout", c.ReadTimeout.String())
	}
	return args
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// ParseStandinFlags reads the flags Args writes.
func ParseStandinFlags(args []string) (StandinConfig, error) {
	var c StandinConfig
	fs := flag.NewFlagSet("standin", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var bind, tcp, udp, answer string
	var records []string
	fs.StringVar(&c.Name, "name", "standin", "name in the banner and the records")
	fs.StringVar(&bind, "bind", "", "address to bind (default 0.0.0.0)")
	fs.StringVar(&tcp, "tcp", "", "TCP ports, comma-separated")
	fs.StringVar(&udp, "udp", "", "UDP ports, comma-separated")
	fs.IntVar(&c.DNSPort, "dns-port", 0, "DNS port, UDP and TCP (0: none, -1: free ports)")
	fs.StringVar(&answer, "dns-answer", "", "address answered to A queries")
	fs.Func("dns-record", "name=address, repeatable", func(s string) error { records = append(records, s); return nil })
	fs.DurationVar(&c.ReadTimeout, "read-timeout", 0, "how long a TCP client's first line is waited for")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if bind != "" {
		if c.Bind, err = netip.ParseAddr(bind); err != nil {
			return c, fmt.Errorf("-bind: %w", err)
		}
	}
	if c.TCPPorts, err = parsePorts(tcp); err != nil {
		return c, fmt.Errorf("-tcp: %w", err)
	}
	if c.UDPPorts, err = parsePorts(udp); err != nil {
		return c, fmt.Errorf("-udp: %w", err)
	}
	if answer != "" {
		if c.DNSAnswer, err = netip.ParseAddr(answer); err != nil {
			return c, fmt.Errorf("-dns-answer: %w", err)
		}
	}
	for _, r := range records {
		n, a, ok := strings.Cut(r, "=")
		ip, err := netip.ParseAddr(a)
		if !ok || err != nil {
			return c, fmt.Errorf("-dns-record %q: want name=address", r)
		}
		if c.DNSRecords == nil {
			c.DNSRecords = map[string]netip.Addr{}
		}
		c.DNSRecords[normName(n)] = ip
	}
	return c, nil
}

func parsePorts(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("port %q", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func normName(n string) string { return strings.ToLower(strings.TrimSuffix(n, ".")) }

// Standin is a bound stand-in; Serve answers until its context ends.
type Standin struct {
	cfg StandinConfig
	out io.Writer

	mu  sync.Mutex // serialises out and seq
	seq int64

	tcp []tcpListener
	udp []udpListener
}

type tcpListener struct {
	l    *net.TCPListener
	port int
	dns  bool
}

type udpListener struct {
	c    *net.UDPConn
	port int
	dns  bool
}

// ListenStandin binds every listener cfg names and writes the "ready"
// record to out; a port it cannot bind is an error (nothing stays bound).
func ListenStandin(cfg StandinConfig, out io.Writer) (*Standin, error) {
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 2 * time.Second
	}
	if !cfg.DNSAnswer.IsValid() {
		cfg.DNSAnswer = DefaultDNSAnswer
	}
	bind := cfg.Bind
	if !bind.IsValid() {
		bind = netip.IPv4Unspecified()
	}
	s := &Standin{cfg: cfg, out: out}
	fail := func(err error) (*Standin, error) {
		s.closeAll()
		return nil, err
	}
	addTCP := func(port int, dns bool) error {
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(bind, uint16(port))))
		if err != nil {
			return err
		}
		s.tcp = append(s.tcp, tcpListener{l: l, port: l.Addr().(*net.TCPAddr).Port, dns: dns})
		return nil
	}
	addUDP := func(port int, dns bool) error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(bind, uint16(port))))
		if err != nil {
			return err
		}
		s.udp = append(s.udp, udpListener{c: c, port: c.LocalAddr().(*net.UDPAddr).Port, dns: dns})
		return nil
	}
	for _, p := range cfg.TCPPorts {
		if err := addTCP(p, false); err != nil {
			return fail(err)
		}
	}
	for _, p := range cfg.UDPPorts {
		if err := addUDP(p, false); err != nil {
			return fail(err)
		}
	}
	if cfg.DNSPort != 0 {
		p := max(cfg.DNSPort, 0)
		if err := addUDP(p, true); err != nil {
			return fail(err)
		}
		if err := addTCP(p, true); err != nil {
			return fail(err)
		}
	}
	if len(s.tcp)+len(s.udp) == 0 {
		return fail(errors.New("nothing to listen on: give -tcp, -udp or -dns-port"))
	}
	var listen []string
	for _, l := range s.tcp {
		listen = append(listen, "tcp "+l.l.Addr().String())
	}
	for _, u := range s.udp {
		listen = append(listen, "udp "+u.c.LocalAddr().String())
	}
	s.emit(Record{Event: "ready", Listen: listen})
	return s, nil
}

// TCPAddrs are the bound TCP addresses (the DNS one last), for tests that
// asked for port 0.
func (s *Standin) TCPAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, l := range s.tcp {
		out = append(out, l.l.Addr().(*net.TCPAddr).AddrPort())
	}
	return out
}

// UDPAddrs are the bound UDP addresses (the DNS one last).
func (s *Standin) UDPAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, u := range s.udp {
		out = append(out, u.c.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	return out
}

func (s *Standin) closeAll() {
	for _, l := range s.tcp {
		_ = l.l.Close()
	}
	for _, u := range s.udp {
		_ = u.c.Close()
	}
}

// Serve answers until ctx ends, then closes the listeners and waits for the
// connections in progress (each bounded by ReadTimeout).
func (s *Standin) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, l := range s.tcp {
		wg.Go(func() { s.acceptLoop(&wg, l) })
	}
	for _, u := range s.udp {
		wg.Go(func() { s.udpLoop(u) })
	}
	<-ctx.Done()
	s.closeAll()
	wg.Wait()
	return nil
}

func (s *Standin) emit(r Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	r.Standin, r.Seq, r.Time = s.cfg.Name, s.seq, time.Now()
	b, _ := json.Marshal(r)
	_, _ = s.out.Write(append(b, '\n'))
}

func (s *Standin) acceptLoop(wg *sync.WaitGroup, l tcpListener) {
	for {
		c, err := l.l.AcceptTCP()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// EMFILE and the like: report, back off, go on.
			s.emit(Record{Event: "error", Proto: "tcp", LocalPort: l.port, Error: err.Error()})
			time.Sleep(50 * time.Millisecond)
			continue
		}
		wg.Go(func() { s.handleTCP(c, l) })
	}
}

func (s *Standin) banner(port int) string { return Banner(s.cfg.Name, port) }

func (s *Standin) handleTCP(c *net.TCPConn, l tcpListener) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(s.cfg.ReadTimeout))
	r := Record{Event: "tcp", Proto: "tcp", Peer: c.RemoteAddr().String(), Local: c.LocalAddr().String(), LocalPort: l.port}
	if !l.dns {
		// Server first: a client that waits for a greeting gets one, and
		// one that speaks first gets it just the same.
		r.Reply = s.banner(l.port)
		if _, err := io.WriteString(c, r.Reply+"\n"); err != nil {
			r.Error = err.Error()
		}
		line, err := readLine(c)
		r.Data = line
		if err != nil && r.Error == "" && !errors.Is(err, io.EOF) {
			r.Error = err.Error()
		}
		s.emit(r)
		return
	}
	// The DNS port: the client speaks first, a DNS message or a line.
	msg, data, err := readDNSOrLine(c)
	if msg != nil {
		q, _ := ParseQuestion(msg)
		answer := s.answer(msg, q, &r)
		r.Event = "dns"
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(answer))), answer...)); err != nil {
			r.Error = err.Error()
		}
		s.emit(r)
		return
	}
	r.Data = data
	if err != nil && !errors.Is(err, io.EOF) {
		r.Error = err.Error()
	}
	// A client that sent nothing used up the read deadline: the banner
	// still gets its own.
	_ = c.SetWriteDeadline(time.Now().Add(s.cfg.ReadTimeout))
	r.Reply = s.banner(l.port)
	_, _ = io.WriteString(c, r.Reply+"\n")
	s.emit(r)
}

// answer builds the answer to the query msg (parsed as q) and fills the
// DNS fields of r.
func (s *Standin) answer(msg []byte, q Question, r *Record) []byte {
	r.QName, r.QType = normName(q.Name), TypeName(q.Type)
	addr, ok := s.cfg.DNSRecords[r.QName]
	if !ok {
		addr = s.cfg.DNSAnswer
	}
	out := BuildAnswer(msg, q, []netip.Addr{addr})
	if resp, err := ParseResponse(out); err == nil {
		for _, a := range resp.Answers {
			r.Answers = append(r.Answers, a.String())
		}
	}
	return out
}

// readLine reads up to a newline, MaxData bytes, EOF or the deadline, and
// returns the line without its end.
func readLine(c net.Conn) (string, error) {
	var buf []byte
	tmp := make([]byte, MaxData)
	for {
		n, err := c.Read(tmp[:MaxData-len(buf)])
		buf = append(buf, tmp[:n]...)
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			return cleanLine(buf[:i]), nil
		}
		if len(buf) >= MaxData || err != nil {
			return cleanLine(buf), err
		}
	}
}

// readDNSOrLine reads a length-prefixed DNS message (msg set) or else a
// line. The two first bytes tell them apart: a length a query can have
// (12 to 4096) waits for the whole message; any other start ("pr" of a
// probe's line is 28786) is read as a line.
func readDNSOrLine(c net.Conn) (msg []byte, line string, err error) {
	var buf []byte
	tmp := make([]byte, 4096)
	for {
		n, rerr := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if len(buf) >= 2 {
			l := int(binary.BigEndian.Uint16(buf))
			if l >= dnsHeaderLen && l <= 4096 {
				if len(buf) >= 2+l {
					if _, perr := ParseQuestion(buf[2 : 2+l]); perr == nil {
						return buf[2 : 2+l], "", nil
					}
					return nil, cleanLine(buf), nil
				}
			} else if i := bytes.IndexByte(buf, '\n'); i >= 0 {
				return nil, cleanLine(buf[:i]), nil
			}
		}
		if len(buf) >= 4096+2 || rerr != nil {
			return nil, cleanLine(buf), rerr
		}
	}
}

func cleanLine(b []byte) string {
	if len(b) > MaxData {
		b = b[:MaxData]
	}
	return strings.ToValidUTF8(strings.TrimRight(string(b), "\r\n"), "\uFFFD")
}

func (s *Standin) udpLoop(u udpListener) {
	buf := make([]byte, 65536)
	for {
		n, peer, err := u.c.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			s.emit(Record{Event: "error", Proto: "udp", LocalPort: u.port, Error: err.Error()})
			time.Sleep(50 * time.Millisecond)
			continue
		}
		pkt := buf[:n]
		r := Record{Event: "udp", Proto: "udp", Peer: peer.String(), LocalPort: u.port}
		var reply []byte
		if q, err := ParseQuestion(pkt); u.dns && err == nil {
			r.Event = "dns"
			reply = s.answer(pkt, q, &r)
		} else {
			r.Data = firstLine(pkt)
			r.Reply = s.banner(u.port)
			reply = []byte(r.Reply + "\n")
		}
		if _, err := u.c.WriteToUDPAddrPort(reply, peer); err != nil {
			r.Error = err.Error()
		}
		s.emit(r)
	}
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return cleanLine(b)
}

// StandinMain is cmd/standin: it serves until ctx ends and returns the
// exit code. Usage errors go to stderr.
func StandinMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := ParseStandinFlags(args)
	if err != nil {
		fmt.Fprintln(stderr, "standin:", err)
		return 2
	}
	s, err := ListenStandin(cfg, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "standin:", err)
		return 1
	}
	_ = s.Serve(ctx)
	return 0
}
