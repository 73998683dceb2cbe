package netprobe

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Attempt is one parsed probe argument. The syntax is KIND:ARG followed by
// options, each ",name" or ",name=value" (values cannot hold commas):
//
//	tcp:IP:PORT        connect (IPv6 as [addr]:port; [::ffff:a.b.c.d]:port
//	                   connects an AF_INET6 socket to a v4-mapped address),
//	                   send a line, read the first line back
//	udp:IP:PORT        send a datagram (sendto on an unconnected socket, or
//	                   connect+write with ",connect"), wait for a reply
//	dns:IP[:PORT]      an A query over UDP (port 53 by default)
//	dnstcp:IP[:PORT]   the same over TCP
//	socket:SPEC        create a socket and close it; SPEC is raw (inet raw
//	                   icmp), raw6, ping (inet dgram icmp), ping6, packet,
//	                   tcp, udp, tcp6, udp6, sctp, mptcp, or
//	                   FAMILY/TYPE/PROTO by name (inet, inet6, packet;
//	                   stream, dgram, raw, seqpacket; tcp, udp, icmp,
//	                   icmpv6, sctp, mptcp) or number
//	sleep:DURATION     pause (between attempts of one round)
//	http:HOST[:PORT]   GET http://HOST[:PORT]PATH (package net: resolves
//	                   HOST through the container's resolver, so DNS goes
//	                   through the firewall like an agent's would)
//	https:HOST[:PORT]  the same over TLS with SNI HOST; the certificate is
//	                   not verified but its SHA-256 is reported (Cert), so
//	                   a test can tell the server's own from a MITM's
//
// Options: send=TEXT (the line sent; default "probe <seq> <attempt>"),
// nosend, noread (OK once connected or sent), connect (udp, dns),
// name=NAME and type=A|AAAA|N (dns, dnstcp), timeout=DURATION (overrides
// -timeout), uid=N and gid=N (run the attempt in a child process with
// these ids; needs CAP_SETUID and CAP_SETGID, gid defaults to uid),
// ip=IP (http, https: dial IP instead of resolving HOST, SNI and Host
// still HOST), path=/P (http, https; default /), read=N (http, https: read
// N bytes of the body and report how many came; 0 reads one line),
// ca=FILE (https: verify the certificate against the PEM roots in FILE, as
// an agent trusting that CA would; a failure is a "tls" failure).
type Attempt struct {
	Spec   string // as given
	Kind   string
	Target netip.AddrPort
	// Send is the line sent (newline added); empty means the default.
	Send    string
	NoSend  bool
	NoRead  bool
	Connect bool
	Name    string
	QType   uint16
	// Socket family, type and protocol of a socket attempt.
	Family, Type, Proto int
	Timeout             time.Duration
	Sleep               time.Duration
	// AsUser: run in a child with UID and GID.
	AsUser   bool
	UID, GID int
	// childSpec is Spec without uid and gid: what the child is given.
	childSpec string
	// Host, DialIP, Path, ReadBytes: http and https attempts.
	Host      string
	Port      uint16
	DialIP    netip.Addr
	Path      string
	ReadBytes int64
	CAFile    string
}

// sendLine is the line an attempt sends, newline excluded.
func (a Attempt) sendLine(seq int64) string {
	if a.Send != "" {
		return a.Send
	}
	return "probe " + strconv.FormatInt(seq, 10) + " " + a.Spec
}

// ParseAttempt parses one attempt (see Attempt).
func ParseAttempt(spec string) (Attempt, error) {
	a := Attempt{Spec: spec, QType: TypeA, Name: DefaultDNSName}
	parts := strings.Split(spec, ",")
	kind, arg, ok := strings.Cut(parts[0], ":")
	if !ok {
		return a, fmt.Errorf("attempt %q: want KIND:ARG", spec)
	}
	a.Kind = kind
	var err error
	switch kind {
	case "tcp", "udp":
		if a.Target, err = netip.ParseAddrPort(arg); err != nil {
			return a, fmt.Errorf("attempt %q: %w", spec, err)
		}
	case "dns", "dnstcp":
		if a.Target, err = parseDNSTarget(arg); err != nil {
			return a, fmt.Errorf("attempt %q: %w", spec, err)
		}
	case "socket":
		if a.Family, a.Type, a.Proto, err = parseSocketSpec(arg); err != nil {
			return a, fmt.Errorf("attempt %q: %w", spec, err)
		}
	case "sleep":
		if a.Sleep, err = time.ParseDuration(arg); err != nil {
			return a, fmt.Errorf("attempt %q: %w", spec, err)
		}
	case "http", "https":
		a.Host, a.Path, a.Port = arg, "/", 443
		if kind == "http" {
			a.Port = 80
		}
		if h, p, ok := strings.Cut(arg, ":"); ok {
			n, err := strconv.ParseUint(p, 10, 16)
			if err != nil {
				return a, fmt.Errorf("attempt %q: port %q: %w", spec, p, err)
			}
			a.Host, a.Port = h, uint16(n)
		}
	default:
		return a, fmt.Errorf("attempt %q: unknown kind %q (tcp, udp, dns, dnstcp, socket, sleep, http, https)", spec, kind)
	}
	child := []string{parts[0]}
	gidSet := false
	for _, opt := range parts[1:] {
		name, val, hasVal := strings.Cut(opt, "=")
		bad := func(err error) (Attempt, error) {
			return a, fmt.Errorf("attempt %q: option %q: %w", spec, opt, err)
		}
		switch name {
		case "send":
			a.Send = val
		case "nosend":
			a.NoSend = true
		case "noread":
			a.NoRead = true
		case "connect":
			a.Connect = true
		case "name":
			a.Name = val
		case "ip":
			if a.DialIP, err = netip.ParseAddr(val); err != nil {
				return bad(err)
			}
		case "path":
			a.Path = val
		case "ca":
			a.CAFile = val
		case "read":
			if a.ReadBytes, err = strconv.ParseInt(val, 10, 64); err != nil || a.ReadBytes < 0 {
				return bad(errors.New("want a byte count"))
			}
		case "type":
			if a.QType, err = ParseType(val); err != nil {
				return bad(err)
			}
		case "timeout":
			if a.Timeout, err = time.ParseDuration(val); err != nil {
				return bad(err)
			}
		case "uid", "gid":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return bad(errors.New("want a number"))
			}
			a.AsUser = true
			if name == "uid" {
				a.UID = n
			} else {
				a.GID, gidSet = n, true
			}
			continue // not passed on to the child
		default:
			return bad(errors.New("unknown option"))
		}
		flagOpt := name == "nosend" || name == "noread" || name == "connect"
		if flagOpt && hasVal {
			return bad(errors.New("takes no value"))
		}
		if !flagOpt && !hasVal {
			return bad(errors.New("needs a value"))
		}
		child = append(child, opt)
	}
	if a.AsUser && !gidSet {
		a.GID = a.UID
	}
	a.childSpec = strings.Join(child, ",")
	return a, nil
}

func parseDNSTarget(arg string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(arg); err == nil {
		return ap, nil
	}
	ip, err := netip.ParseAddr(strings.Trim(arg, "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("want IP or IP:PORT: %w", err)
	}
	return netip.AddrPortFrom(ip, DNSPort), nil
}

// Socket constants (Linux values; the spec is only used on Linux).
const (
	afInet   = 2
	afInet6  = 10
	afPacket = 17

	sockStream    = 1
	sockDgram     = 2
	sockRaw       = 3
	sockSeqpacket = 5

	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132
	protoRaw    = 255
	protoMPTCP  = 262
)

var socketAliases = map[string][3]int{
	"raw":    {afInet, sockRaw, protoICMP},
	"raw6":   {afInet6, sockRaw, protoICMPv6},
	"ping":   {afInet, sockDgram, protoICMP},
	"ping6":  {afInet6, sockDgram, protoICMPv6},
	"packet": {afPacket, sockRaw, 0},
	"tcp":    {afInet, sockStream, protoTCP},
	"udp":    {afInet, sockDgram, protoUDP},
	"tcp6":   {afInet6, sockStream, protoTCP},
	"udp6":   {afInet6, sockDgram, protoUDP},
	"sctp":   {afInet, sockStream, protoSCTP},
	"mptcp":  {afInet, sockStream, protoMPTCP},
}

func parseSocketSpec(s string) (fam, typ, proto int, err error) {
	if v, ok := socketAliases[s]; ok {
		return v[0], v[1], v[2], nil
	}
	f := strings.Split(s, "/")
	if len(f) != 3 {
		return 0, 0, 0, fmt.Errorf("socket %q: want an alias or FAMILY/TYPE/PROTO", s)
	}
	names := []map[string]int{
		{"inet": afInet, "inet6": afInet6, "packet": afPacket},
		{"stream": sockStream, "dgram": sockDgram, "raw": sockRaw, "seqpacket": sockSeqpacket},
		{"ip": 0, "tcp": protoTCP, "udp": protoUDP, "icmp": protoICMP, "icmpv6": protoICMPv6, "sctp": protoSCTP, "raw": protoRaw, "mptcp": protoMPTCP},
	}
	var out [3]int
	for i, p := range f {
		if v, ok := names[i][p]; ok {
			out[i] = v
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("socket %q: unknown %q", s, p)
		}
		out[i] = n
	}
	return out[0], out[1], out[2], nil
}

// ProbeConfig is how cmd/probe runs its attempts.
type ProbeConfig struct {
	Attempts []Attempt
	// Timeout bounds each attempt (an attempt's timeout= overrides it).
	Timeout time.Duration
	// Loop repeats the attempts, every Interval, until the context ends,
	// Count rounds were made, For passed, or StopFile exists.
	Loop     bool
	Interval time.Duration
	Count    int
	For      time.Duration
	StopFile string
	// Hold waits for the context to end after the last attempt (a probe
	// container that stays up for exec'd probes).
	Hold bool
	// FirstSeq numbers the first outcome; Round numbers the first round
	// (a child run for uid= carries its parent's numbers).
	FirstSeq int64
	Round    int
	// Child suppresses the "done" line.
	Child bool
}

// ParseProbeFlags reads cmd/probe's flags and attempts.
func ParseProbeFlags(args []string) (ProbeConfig, error) {
	c := ProbeConfig{}
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.DurationVar(&c.Timeout, "timeout", 2*time.Second, "bound of one attempt")
	fs.BoolVar(&c.Loop, "loop", false, "repeat the attempts until stopped")
	fs.DurationVar(&c.Interval, "interval", 20*time.Millisecond, "pause between loop rounds")
	fs.IntVar(&c.Count, "count", 0, "stop the loop after this many rounds (0: no limit)")
	fs.DurationVar(&c.For, "for", 0, "stop the loop after this long (0: no limit)")
	fs.StringVar(&c.StopFile, "stop-file", "", "stop the loop once this file exists")
	fs.BoolVar(&c.Hold, "hold", false, "after the attempts, wait for SIGTERM")
	fs.Int64Var(&c.FirstSeq, "seq", 1, "number of the first outcome")
	fs.IntVar(&c.Round, "round", 1, "number of the first round")
	fs.BoolVar(&c.Child, "child", false, "internal: a child run for uid=")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	for _, s := range fs.Args() {
		a, err := ParseAttempt(s)
		if err != nil {
			return c, err
		}
		c.Attempts = append(c.Attempts, a)
	}
	if len(c.Attempts) == 0 && !c.Hold {
		return c, errors.New("no attempts given (and no -hold)")
	}
	return c, nil
}

// ProbeMain is cmd/probe: it runs the attempts, writing one Outcome line
// each and a "done" line last, and returns the exit code (2 for bad
// arguments; failed attempts are outcomes, not exit codes).
func ProbeMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := ParseProbeFlags(args)
	if err != nil {
		fmt.Fprintln(stderr, "probe:", err)
		return 2
	}
	RunProbe(ctx, cfg, stdout)
	return 0
}

// RunProbe runs cfg, writing outcomes to out as JSON lines.
func RunProbe(ctx context.Context, cfg ProbeConfig, out io.Writer) {
	// One Write per line: a reader of the container log never sees half
	// a line.
	write := func(o Outcome) {
		b, _ := json.Marshal(o)
		_, _ = out.Write(append(b, '\n'))
	}
	if cfg.FirstSeq < 1 {
		cfg.FirstSeq = 1
	}
	if cfg.Round < 1 {
		cfg.Round = 1
	}
	seq, round := cfg.FirstSeq, cfg.Round
	start := time.Now()
	reason := ""
rounds:
	for ; ; round++ {
		for _, a := range cfg.Attempts {
			if ctx.Err() != nil {
				reason = "signal"
				break rounds
			}
			o := runOne(ctx, a, seq, cfg.Timeout)
			o.Seq, o.Round = seq, round
			write(o)
			seq++
		}
		switch {
		case !cfg.Loop:
			reason = "end"
		case ctx.Err() != nil:
			reason = "signal"
		case cfg.Count > 0 && round-cfg.Round+1 >= cfg.Count:
			reason = "count"
		case cfg.For > 0 && time.Since(start) >= cfg.For:
			reason = "for"
		case cfg.StopFile != "" && fileExists(cfg.StopFile):
			reason = "stop-file"
		}
		if reason != "" {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(cfg.Interval):
		}
	}
	if cfg.Hold && ctx.Err() == nil {
		<-ctx.Done()
		reason = "signal"
	}
	if !cfg.Child {
		write(Outcome{Seq: seq, Round: round, Kind: "done", Time: time.Now(), UID: os.Getuid(), GID: os.Getgid(), OK: true, Reason: reason})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// runOne runs a, in a child process when it asks for another uid.
func runOne(ctx context.Context, a Attempt, seq int64, timeout time.Duration) Outcome {
	if a.Timeout > 0 {
		timeout = a.Timeout
	}
	start := time.Now()
	var o Outcome
	switch {
	case a.Kind == "sleep":
		o = Outcome{OK: true}
		select {
		case <-ctx.Done():
			o.fail("sleep", ctx.Err())
		case <-time.After(a.Sleep):
		}
	case a.AsUser:
		o = runAsUser(ctx, a, seq, timeout)
	default:
		o = runAttempt(a, seq, timeout)
	}
	o.What, o.Kind, o.Time = a.Spec, a.Kind, start
	if a.Target.IsValid() {
		o.Target = a.Target.String()
	}
	o.Millis = float64(time.Since(start).Microseconds()) / 1000
	if !a.AsUser {
		o.UID, o.GID = os.Getuid(), os.Getgid()
	}
	return o
}

// timeoutError is a deadline that passed: reported as ETIMEDOUT.
type timeoutError struct{ after time.Duration }

func (e timeoutError) Error() string { return "no answer within " + e.after.String() }

// fail records the step that failed and the error, with its errno.
func (o *Outcome) fail(step string, err error) {
	o.OK = false
	o.Syscall = step
	o.Error = step + ": " + err.Error()
	var te timeoutError
	if errors.As(err, &te) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		o.Errno, o.Timeout = "ETIMEDOUT", true
		return
	}
	if name, timeout := errnoName(err); name != "" {
		o.Errno, o.Timeout = name, timeout
	}
}
