// Command clawker-proxy is the firewall stack's egress proxy sibling: the
// catch-all listener the kernel redirects agents' outbound TCP to. All the
// logic is in pkg/egressproxy; this main only wires flags, the DNS sibling,
// an optional policy file and signals.
//
// It runs as a non-root user on a read-only root filesystem: it writes
// nothing to disk (access log on stdout, diagnostics on stderr).
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressproxy"
	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// config is everything run needs; main fills it from flags.
type config struct {
	Listen        string // catch-all proxy listener
	Health        string // GET /healthz listener
	DNS           string // the DNS sibling, ip:port
	PolicyFile    string // optional egressrules.Doc JSON, for standalone use
	CP            string // the control plane's stack service (policy push); accepted, wired by run's owner
	PeekTimeout   time.Duration
	DialTimeout   time.Duration
	ShutdownGrace time.Duration // how long SIGTERM lets live connections finish
	RootsFile     string        // system roots for inspected upstreams
}

func main() {
	var cfg config
	flag.StringVar(&cfg.Listen, "listen", ":15001", "catch-all proxy listen address")
	flag.StringVar(&cfg.Health, "health", ":15002", "health listen address (GET /healthz)")
	flag.StringVar(&cfg.DNS, "dns", "", "DNS sibling ip:port used to resolve allowed names (required)")
	flag.StringVar(&cfg.PolicyFile, "policy-file", "", "egressrules.Doc JSON file to load at start and on SIGHUP (optional)")
	flag.StringVar(&cfg.CP, "cp", "", "control plane stack service ip:port for the mTLS policy push (credentials from the environment)")
	flag.DurationVar(&cfg.PeekTimeout, "peek-timeout", 5*time.Second, "deadline for a connection's ClientHello or request headers")
	flag.DurationVar(&cfg.DialTimeout, "dial-timeout", 5*time.Second, "deadline for resolving and for each upstream dial")
	flag.StringVar(&cfg.RootsFile, "roots", stackapi.ProxyRootsFile, "PEM bundle of the roots an inspected name's upstream certificate must chain to (plus $"+stackapi.EnvUpstreamCA+")")
	flag.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 8*time.Second, "on SIGTERM, how long live connections may finish (below Docker's 10 s stop timeout)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetOutput(os.Stderr) // stdout carries the access log only

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Printf("clawker-proxy: %v", err)
		os.Exit(1)
	}
}

// run starts the proxy and its health endpoint, loads the policy file when
// one is given, and serves until ctx is done; it then stops accepting, gives
// live connections ShutdownGrace to end and returns nil.
//
// The control plane's policy push (mTLS) plugs in where marked below: it
// must only call srv.SetPolicy and must not block run.
func run(ctx context.Context, cfg config) error {
	if cfg.DNS == "" {
		// Never fall back to the system resolver: it would bypass the DNS
		// sibling, which records every answer for the kernel.
		return errors.New("--dns is required (the DNS sibling's ip:port)")
	}
	if _, err := netip.ParseAddrPort(cfg.DNS); err != nil {
		return fmt.Errorf("--dns %q: want ip:port: %v", cfg.DNS, err)
	}
	var cp *stackapi.Client
	var onDenied func(egressproxy.Denial)
	if cfg.CP != "" {
		var err error
		if cp, err = controlPlaneClient(cfg.CP); err != nil {
			return err
		}
		// Refusals go to the control plane's window for `clawker firewall
		// denied`, batched off the connection's path.
		q := stackapi.NewRefusalQueue(ctx, cp)
		onDenied = func(d egressproxy.Denial) {
			src := d.Src
			if ap, err := netip.ParseAddrPort(src); err == nil {
				src = ap.Addr().Unmap().String()
			}
			q.Add(stackapi.Refusal{Time: d.Time, Src: src, Name: d.Host, Proto: d.Proto, Reason: d.Reason,
				Where: d.Where, Method: d.Method, Path: d.Path, Allow: d.Allow})
		}
	}
	roots, err := upstreamRoots(cfg.RootsFile, os.Getenv(stackapi.EnvUpstreamCA))
	if err != nil {
		return err
	}
	srv := egressproxy.New(egressproxy.Config{
		UpstreamRoots: roots,
		OnDenied:      onDenied,
		Resolver:      siblingResolver(cfg.DNS),
		PeekTimeout:   cfg.PeekTimeout,
		DialTimeout:   cfg.DialTimeout,
		AccessLog:     os.Stdout,
		Logf:          log.Printf,
	})
	// The dedicated listeners of routed rules (tcp, ssh, https off 443),
	// beside the catch-all, opened from each policy.
	if err := srv.ListenRoutesBeside(cfg.Listen, cfg.Health); err != nil {
		return err
	}

	if cfg.PolicyFile != "" {
		if err := loadPolicyFile(srv, cfg.PolicyFile); err != nil {
			return err
		}
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					// A bad file keeps the current policy rather than
					// failing open or closed.
					if err := loadPolicyFile(srv, cfg.PolicyFile); err != nil {
						log.Printf("clawker-proxy: reload: %v (keeping the current policy)", err)
					}
				}
			}
		}()
	}

	// The control plane's policy, fetched by long poll and swapped in
	// place; the next request acknowledges it. Until the first arrives the
	// proxy refuses everything and /healthz answers 503.
	if cp != nil {
		watchControlPlane(ctx, srv, cp)
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	hln, err := net.Listen("tcp", cfg.Health)
	if err != nil {
		ln.Close()
		return err
	}
	hs := &http.Server{Handler: srv.HealthHandler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	go func() { errc <- hs.Serve(hln) }()
	log.Printf("clawker-proxy: listening on %s, health on %s, resolving via %s", ln.Addr(), hln.Addr(), cfg.DNS)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		// A listener died under us: shut down and report it.
	}
	log.Printf("clawker-proxy: shutting down (grace %v)", cfg.ShutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	hs.Shutdown(sctx)
	if err := srv.Shutdown(sctx); err != nil {
		log.Printf("clawker-proxy: grace expired, closed the remaining connections")
	}
	if serveErr != nil && !errors.Is(serveErr, egressproxy.ErrServerClosed) && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// controlPlaneClient is the mTLS client of the control plane's stack
// service at addr, with the material the control plane put in this
// container's environment.
func controlPlaneClient(addr string) (*stackapi.Client, error) {
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return nil, fmt.Errorf("--cp %q: want ip:port: %v", addr, err)
	}
	tlsCfg, err := stackapi.ClientTLSFromEnv(os.Getenv)
	if err != nil {
		return nil, err
	}
	c := stackapi.NewClient(addr, tlsCfg)
	c.Logf = func(format string, args ...any) { log.Printf("clawker-proxy: "+format, args...) }
	return c, nil
}

// watchControlPlane starts the policy watcher: each policy is compiled and
// swapped in place, and the firewall CA (for inspected names) is fetched
// whenever its fingerprint changes, before the policy that came with it.
func watchControlPlane(ctx context.Context, srv *egressproxy.Server, c *stackapi.Client) {
	setCA := func(ctx context.Context, fp string) error {
		if fp == "" {
			srv.SetInspectCA(nil)
			log.Printf("clawker-proxy: no firewall CA: names with path rules are refused until there is one")
			return nil
		}
		got, err := c.FetchInspectCA(ctx)
		if err != nil {
			return err
		}
		ca, err := egressproxy.ParseInspectCA(got.CertPEM, got.KeyPEM)
		if err != nil {
			return err
		}
		srv.SetInspectCA(ca)
		log.Printf("clawker-proxy: firewall CA %.16s applied (inspection leaves minted from it)", ca.Fingerprint)
		return nil
	}
	go func() {
		_ = c.WatchPolicyAndCA(ctx, func(doc egressrules.Doc) error {
			p, err := doc.Compile()
			if err != nil {
				return err
			}
			srv.SetPolicy(p)
			log.Printf("clawker-proxy: policy generation %d applied (%d rules)", doc.Generation, len(doc.Rules))
			return nil
		}, setCA)
	}()
}

// upstreamRoots is the pool inspected upstreams are verified against: the
// roots file (the host's bundle, copied into the image at build) plus the
// extra PEM of firewall.upstream_ca. A missing roots file is not an error:
// the proxy then trusts upstream_ca alone, and says so.
func upstreamRoots(file, extraPEM string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	b, err := os.ReadFile(file)
	switch {
	case err == nil:
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--roots %s: no certificate in it", file)
		}
	case errors.Is(err, fs.ErrNotExist):
		log.Printf("clawker-proxy: no system roots at %s (the host had no CA bundle when the image was built): inspected upstreams are verified against firewall.upstream_ca alone", file)
	default:
		return nil, fmt.Errorf("--roots %s: %w", file, err)
	}
	if extraPEM != "" {
		if !pool.AppendCertsFromPEM([]byte(extraPEM)) {
			return nil, fmt.Errorf("$%s: no certificate in it (firewall.upstream_ca)", stackapi.EnvUpstreamCA)
		}
		log.Printf("clawker-proxy: firewall.upstream_ca adds its roots for inspected upstreams")
	}
	return pool, nil
}

func loadPolicyFile(srv *egressproxy.Server, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("policy file: %w", err)
	}
	var doc egressrules.Doc
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("policy file %s: %w", path, err)
	}
	p, err := doc.Compile()
	if err != nil {
		return fmt.Errorf("policy file %s: %w", path, err)
	}
	srv.SetPolicy(p)
	log.Printf("clawker-proxy: loaded policy generation %d (%d rules) from %s", doc.Generation, len(doc.Rules), path)
	return nil
}

// rootedResolver asks for the name as an absolute one ("name."), so the
// resolver's search domains can never turn an allowed name into another.
type rootedResolver struct{ r *net.Resolver }

func (r rootedResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if !strings.HasSuffix(host, ".") {
		host += "."
	}
	return r.r.LookupNetIP(ctx, network, host)
}

// siblingResolver sends every query to the DNS sibling, whatever
// /etc/resolv.conf says.
func siblingResolver(addr string) egressproxy.Resolver {
	var d net.Dialer
	return rootedResolver{&net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
}
