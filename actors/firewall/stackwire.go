package firewall

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/clawker/clawker-cp/actors/firewall/stack"
	"github.com/clawker/clawker-cp/pkg/denials"
	"github.com/clawker/clawker-cp/pkg/sibling"
	"github.com/clawker/clawker-cp/pkg/stackapi"
)

// StackConfig is what the firewall needs to run the stack itself. Nil in
// Config: the stack is adopted (something else runs it at the fixed
// addresses).
type StackConfig struct {
	// BinDir holds clawker-dns and clawker-proxy.
	BinDir string
	Docker sibling.Docker
	CA     *stackapi.CA
	Server *stackapi.Server
	// NetworkName is the agent network (container names and labels
	// derive from it).
	NetworkName string
	// HostProcess: the control plane runs on the host, not in its
	// container; the siblings then reach it at the network's gateway
	// instead of <net>.202.
	HostProcess bool
	// Port is control_plane.stack_port.
	Port        int
	UpstreamDNS []string
	// Labels are added to the siblings (tests remove by them).
	Labels map[string]string
	// StartWait bounds a new sibling's wait for health.
	StartWait time.Duration
	// Denials holds the refusals the siblings report (GetDenied).
	Denials *denials.Window
	// UpstreamCA is firewall.upstream_ca's PEM: extra roots for inspected
	// upstreams, passed to the proxy. RootsFile is the host's CA bundle
	// copied into the proxy image (default stackapi.ProxyRootsFile).
	UpstreamCA []byte
	RootsFile  string
	// DNSQueryLog passes --query-log to the DNS sibling (set when
	// monitoring.otlp_endpoint is: its lines are exported, otherwise
	// nothing would read them). Its args are in the spec hash, so a
	// change replaces the sibling.
	DNSQueryLog bool
}

// Binary names in BinDir, and the repositories of their images.
const (
	DNSBinary   = "clawker-dns"
	ProxyBinary = "clawker-proxy"
)

// ProxyHealthPort is where the proxy serves /healthz.
func ProxyHealthPort(proxyPort uint16) uint16 {
	if proxyPort == 15090 {
		return 15091
	}
	return 15090
}

// SiblingName is the container name of a member on network: clawker-dns
// and clawker-proxy on clawker-net, <network>-dns and <network>-proxy on
// any other (tests), so two stacks never share a name.
func SiblingName(network, role string) string {
	if network == "clawker-net" {
		return "clawker-" + role
	}
	return network + "-" + role
}

// cpStackAddr is where the siblings reach the control plane's stack
// service.
func (a *Actor) cpStackAddr() netip.AddrPort {
	sc := a.cfg.Stack
	ip := a.addrs.Gateway
	if !sc.HostProcess {
		b := a.addrs.Gateway.As4()
		b[3] = 202
		ip = netip.AddrFrom4(b)
	}
	return netip.AddrPortFrom(ip, uint16(sc.Port))
}

// listenStack opens the stack service: on the gateway address on a host
// (only the bridge reaches it), on every address inside the container.
func (a *Actor) listenStack() error {
	sc := a.cfg.Stack
	cp := a.cpStackAddr()
	tlsCfg, err := sc.CA.ServerTLS(cp.Addr(), netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		return err
	}
	bind := cp.String()
	if !sc.HostProcess {
		bind = net.JoinHostPort("0.0.0.0", strconv.Itoa(sc.Port))
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return fmt.Errorf("control_plane.stack_port: cannot listen on %s: %w", bind, err)
	}
	srv := &http.Server{
		Handler:           sc.Server.Handler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	a.stackSrv = srv
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	return nil
}

func (a *Actor) closeStack() {
	if a.stackSrv != nil {
		_ = a.stackSrv.Close()
		a.stackSrv = nil
	}
}

// secretEnv carries a sibling's key material: the root filesystem is
// read-only and nothing is mounted, so the environment is the one channel
// (visible only to who can inspect containers, i.e. root on the host).
func (a *Actor) secretEnv(name string) ([]string, error) {
	cert, key, err := a.cfg.Stack.CA.MintClient(name)
	if err != nil {
		return nil, err
	}
	return []string{
		stackapi.EnvCA + "=" + string(a.cfg.Stack.CA.CertPEM()),
		stackapi.EnvCert + "=" + string(cert),
		stackapi.EnvKey + "=" + string(key),
	}, nil
}

func (a *Actor) caFingerprint() string {
	sum := sha256.Sum256(a.cfg.Stack.CA.CertPEM())
	return hex.EncodeToString(sum[:8])
}

func (a *Actor) managedDNS() *stack.Managed {
	sc := a.cfg.Stack
	name := SiblingName(sc.NetworkName, "dns")
	dnsAddr := a.addrs.DNS
	return &stack.Managed{
		Container: name,
		Docker:    sc.Docker,
		Spec: func() (sibling.Spec, error) {
			env, err := a.secretEnv(stackapi.DNSClient)
			if err != nil {
				return sibling.Spec{}, err
			}
			spec := sibling.Spec{
				Role: "dns", Name: name, Repo: DNSBinary, Binary: filepath.Join(sc.BinDir, DNSBinary),
				Network: sc.NetworkName, IP: dnsAddr.Addr(),
				Args: []string{
					"--listen", ":" + strconv.Itoa(int(dnsAddr.Port())),
					"--upstream", strings.Join(sc.UpstreamDNS, ","),
					"--cp", a.cpStackAddr().String(),
				},
				SecretEnv: env, HashExtra: a.caFingerprint(), Labels: sc.Labels,
			}
			if sc.DNSQueryLog {
				spec.Args = append(spec.Args, "--query-log")
			}
			return spec, nil
		},
		Health:    func(ctx context.Context) error { return checkDNS(ctx, dnsAddr) },
		StartWait: sc.StartWait,
		Interval:  time.Second,
		Log:       a.cfg.Log,
	}
}

func (a *Actor) managedProxy() *stack.Managed {
	sc := a.cfg.Stack
	name := SiblingName(sc.NetworkName, "proxy")
	proxyAddr := a.addrs.Proxy
	health := netip.AddrPortFrom(proxyAddr.Addr(), ProxyHealthPort(proxyAddr.Port()))
	return &stack.Managed{
		Container: name,
		Docker:    sc.Docker,
		Spec: func() (sibling.Spec, error) {
			env, err := a.secretEnv(stackapi.ProxyClient)
			if err != nil {
				return sibling.Spec{}, err
			}
			var plainEnv []string
			if len(sc.UpstreamCA) > 0 {
				plainEnv = append(plainEnv, stackapi.EnvUpstreamCA+"="+string(sc.UpstreamCA))
			}
			roots := sc.RootsFile
			if roots == "" {
				roots = stackapi.ProxyRootsFile
			}
			return sibling.Spec{
				Role: "proxy", Name: name, Repo: ProxyBinary, Binary: filepath.Join(sc.BinDir, ProxyBinary),
				Network: sc.NetworkName, IP: proxyAddr.Addr(),
				Args: []string{
					"--listen", ":" + strconv.Itoa(int(proxyAddr.Port())),
					"--health", ":" + strconv.Itoa(int(health.Port())),
					"--dns", a.addrs.DNS.String(),
					"--cp", a.cpStackAddr().String(),
				},
				Env: plainEnv, Files: map[string]string{stackapi.ProxyRootsFile: roots},
				SecretEnv: env, HashExtra: a.caFingerprint(), Labels: sc.Labels,
			}, nil
		},
		Health:    func(ctx context.Context) error { return checkProxy(ctx, health) },
		StartWait: sc.StartWait,
		Interval:  time.Second,
		Log:       a.cfg.Log,
	}
}

// checkProxy asks the proxy's health endpoint, which answers 200 only
// once it holds a policy.
func checkProxy(ctx context.Context, addr netip.AddrPort) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("no egress proxy answers at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("egress proxy at %s: health %s", addr, resp.Status)
	}
	return nil
}

// checkDNS sends the DNS sibling its health query (CH TXT
// health.clawker-dns.) over UDP: a real answer through its serving path.
func checkDNS(ctx context.Context, addr netip.AddrPort) error {
	name := dnsmessage.MustNewName("health.clawker-dns.")
	id := uint16(time.Now().UnixNano())
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: false},
		Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassCHAOS}},
	}
	q, err := msg.Pack()
	if err != nil {
		return err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return fmt.Errorf("no DNS server answers at %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(q); err != nil {
		return fmt.Errorf("no DNS server answers at %s: %w", addr, err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("no DNS server answers at %s: %w", addr, err)
	}
	var resp dnsmessage.Message
	if err := resp.Unpack(buf[:n]); err != nil {
		return fmt.Errorf("DNS server at %s: bad health answer: %w", addr, err)
	}
	if resp.Header.ID != id || resp.Header.RCode != dnsmessage.RCodeSuccess || len(resp.Answers) == 0 {
		return fmt.Errorf("DNS server at %s: health query answered %s with %d records", addr, resp.Header.RCode, len(resp.Answers))
	}
	return nil
}

var errNoStack = errors.New("the firewall stack is not run by this control plane")
