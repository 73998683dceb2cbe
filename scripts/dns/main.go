// Command clawker-dns is the DNS sibling of the clawker egress firewall:
// CoreDNS built as a library with a short chain (errors, clawkerfw, cache,
// forward), its Corefile rendered from flags in memory (the rootfs is read
// only; nothing is written to disk).
//
//	clawker-dns --upstream 10.0.0.1:53 [--listen :53] [--policy-file doc.json] [--no-report] [--query-log]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The only plugins in the binary; the order of the chain is Directives.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"

	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/scripts/dns/clawkerfw"
)

// Directives is the whole plugin chain, in order. clawkerfw is above cache so
// a cached answer is filtered and reported like a fresh one.
var Directives = []string{"bind", "errors", "clawkerfw", "cache", "forward"}

// firewallName is the name the Corefile uses for the one Firewall.
const firewallName = "main"

type options struct {
	listen         string
	upstreams      []netip.AddrPort
	cacheTTL       time.Duration
	cacheSize      int
	policyFile     string
	noReport       bool
	reportTimeout  time.Duration
	statsInterval  time.Duration
	host, port     string
	upstreamString string
	cp             string // the control plane's stack service, ip:port
	queryLog       bool
}

func main() {
	dnsserver.Directives = Directives
	o, err := parseFlags(flag.CommandLine, os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "clawker-dns:", err)
		os.Exit(2)
	}
	fw := newFirewall(o, os.Stdout)
	if o.policyFile != "" {
		doc, err := readPolicyFile(o.policyFile)
		if err == nil {
			err = fw.SetDoc(doc)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "clawker-dns:", err)
			os.Exit(2)
		}
	}
	if err := wireControlPlane(fw, o); err != nil {
		fmt.Fprintln(os.Stderr, "clawker-dns: wiring the control plane:", err)
		os.Exit(1)
	}
	if fw.Reporter == nil {
		fmt.Fprintln(os.Stderr, "clawker-dns: no Reporter: nothing would tell the datapath about answers (pass --no-report for standalone use)")
		os.Exit(2)
	}
	clawkerfw.Register(firewallName, fw)

	corefile := renderCorefile(o)
	caddy.RegisterCaddyfileLoader("clawker-dns", caddy.LoaderFunc(func(serverType string) (caddy.Input, error) {
		return caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "clawker-dns flags", ServerTypeName: serverType}, nil
	}))
	dnsserver.Quiet = true // our one startup line replaces CoreDNS's banner

	var once sync.Once
	caddy.RegisterEventHook("clawker-dns-started", func(ev caddy.EventName, _ any) error {
		if ev == caddy.InstanceStartupEvent {
			once.Do(func() { fmt.Println(startupLine(fw, o)) })
		}
		return nil
	})
	caddy.OnProcessExit = append(caddy.OnProcessExit, func() {
		if fw.QueryLog != nil {
			fw.QueryLog.Close() // the queued lines before the exit line
		}
		fmt.Println("clawker-dns: exiting:", fw.Metrics())
	})
	if o.statsInterval > 0 {
		go logStats(fw, o.statsInterval)
	}
	// CoreDNS traps signals: SIGTERM stops the servers and exits 0.
	coremain.Run()
}

// newFirewall is the Firewall the flags describe; the query log, when
// asked for, goes to stdout (where the control plane follows it).
func newFirewall(o *options, stdout io.Writer) *clawkerfw.Firewall {
	fw := clawkerfw.New()
	fw.ReportTimeout = o.reportTimeout
	if o.noReport {
		fw.Reporter = clawkerfw.AcceptAll
	}
	if o.queryLog {
		fw.QueryLog = clawkerfw.NewQueryLog(stdout)
	}
	return fw
}

// parseFlags defines our flags on fs (coremain.Run parses the same set again,
// which is harmless, and adds its own -version/-plugins there).
func parseFlags(fs *flag.FlagSet, args []string) (*options, error) {
	o := &options{}
	fs.StringVar(&o.listen, "listen", ":53", "address to serve DNS on, UDP and TCP")
	fs.StringVar(&o.upstreamString, "upstream", "", "upstream resolver(s), ip:port[,ip:port...] (required)")
	fs.DurationVar(&o.cacheTTL, "cache-ttl", 300*time.Second, "cap on how long an upstream answer is cached")
	fs.IntVar(&o.cacheSize, "cache-size", 10000, "cached answers (success and denial each)")
	fs.StringVar(&o.policyFile, "policy-file", "", "egressrules.Doc JSON to load at start (standalone use)")
	fs.BoolVar(&o.noReport, "no-report", false, "standalone: accept every answer without telling a control plane")
	fs.DurationVar(&o.reportTimeout, "report-timeout", clawkerfw.DefaultReportTimeout, "how long an answer waits for the control plane before SERVFAIL")
	fs.DurationVar(&o.statsInterval, "stats-interval", 5*time.Minute, "log the counters this often when they changed (0: only at exit)")
	fs.BoolVar(&o.queryLog, "query-log", false, "write one JSON line per decided query to stdout (the control plane sets it when monitoring.otlp_endpoint is)")
	fs.StringVar(&o.cp, "cp", "", "the control plane's stack service, ip:port: policy from there, answers reported there (material in CLAWKER_STACK_*)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c := fs.Lookup("conf"); c != nil && c.Value.String() != "" {
		return nil, errors.New("-conf is not supported: the Corefile comes from the flags")
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	host, port, err := net.SplitHostPort(o.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return nil, fmt.Errorf("--listen %q: bad port", o.listen)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return nil, fmt.Errorf("--listen %q: the host must be an IP address", o.listen)
		}
	}
	o.host, o.port = host, port
	if o.upstreamString == "" {
		// There is deliberately no default resolver: a test or a stack that
		// forgot it must not quietly reach the host's.
		return nil, errors.New("--upstream is required (ip:port[,ip:port...])")
	}
	for _, s := range strings.Split(o.upstreamString, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--upstream %q: want ip:port: %w", s, err)
		}
		o.upstreams = append(o.upstreams, ap)
	}
	if o.cacheTTL < time.Second {
		return nil, errors.New("--cache-ttl must be at least 1s")
	}
	if o.cacheSize < 1 {
		return nil, errors.New("--cache-size must be positive")
	}
	if o.reportTimeout <= 0 {
		return nil, errors.New("--report-timeout must be positive")
	}
	if o.cp != "" {
		if _, err := netip.ParseAddrPort(o.cp); err != nil {
			return nil, fmt.Errorf("--cp %q: want ip:port: %w", o.cp, err)
		}
		if o.noReport {
			return nil, errors.New("--cp and --no-report exclude each other")
		}
	}
	return o, nil
}

// renderCorefile is the whole server configuration.
func renderCorefile(o *options) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, ".:%s {\n", o.port)
	if o.host != "" {
		fmt.Fprintf(&b, "\tbind %s\n", o.host)
	}
	// One line per kind of error and 10 s, not one per failing query.
	b.WriteString("\terrors {\n\t\tconsolidate 10s \".*\" warning show_first\n\t}\n")
	fmt.Fprintf(&b, "\tclawkerfw %s\n", firewallName)
	ttl := int(o.cacheTTL / time.Second)
	fmt.Fprintf(&b, "\tcache %d {\n\t\tsuccess %d %d\n\t\tdenial %d %d\n\t}\n", ttl, o.cacheSize, ttl, o.cacheSize, min(ttl, 30))
	b.WriteString("\tforward .")
	for _, u := range o.upstreams {
		fmt.Fprintf(&b, " %s", u)
	}
	b.WriteString("\n}\n")
	return b.String()
}

func readPolicyFile(path string) (egressrules.Doc, error) {
	var doc egressrules.Doc
	raw, err := os.ReadFile(path)
	if err != nil {
		return doc, fmt.Errorf("--policy-file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields() // a typo must not silently drop a rule
	if err := dec.Decode(&doc); err != nil {
		return doc, fmt.Errorf("--policy-file %s: %w", path, err)
	}
	return doc, nil
}

func startupLine(fw *clawkerfw.Firewall, o *options) string {
	pol := "none (REFUSED until one arrives)"
	if p := fw.Policy(); p != nil {
		pol = fmt.Sprintf("generation %d", p.Generation())
	}
	rep := "control plane"
	if o.noReport {
		rep = "none (--no-report)"
	}
	return fmt.Sprintf("clawker-dns: serving udp+tcp on %s, upstream %s, policy %s, reporter %s (timeout %s), cache %s x %d",
		o.listen, o.upstreamString, pol, rep, o.reportTimeout, o.cacheTTL, o.cacheSize)
}

func logStats(fw *clawkerfw.Firewall, every time.Duration) {
	var last clawkerfw.Metrics
	for range time.Tick(every) {
		if m := fw.Metrics(); m != last {
			fmt.Println("clawker-dns:", m)
			last = m
		}
	}
}
