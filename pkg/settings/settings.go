// Package settings loads and validates clawker-cp's settings.yaml.
//
// The file is optional: a missing file means "all defaults". When present it
// is overlaid onto Default() key by key, so a user only writes what they want
// to change. Loading is strict: unknown keys, wrong types and invalid values
// are errors that name the key by its full dotted path, because a control
// plane silently running with a mistyped setting (e.g. the firewall still on,
// or off) is worse than one that refuses to start.
package settings

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Settings is the root of settings.yaml.
type Settings struct {
	ControlPlane ControlPlane `yaml:"control_plane"`
	Firewall     Firewall     `yaml:"firewall"`
	Monitoring   Monitoring   `yaml:"monitoring"`
	Agents       Agents       `yaml:"agents"`
}

// Agents bounds every agent container `clawker run` creates.
type Agents struct {
	// PidsLimit caps the container's tasks (a fork bomb stops there).
	PidsLimit int `yaml:"pids_limit"`
	// Memory caps the container's memory, e.g. "8g", "512m" (bytes
	// without a suffix; k, m, g, t are powers of 1024).
	Memory string `yaml:"memory"`
}

// DefaultAgentPidsLimit and DefaultAgentMemory are the agents' defaults:
// generous for a build or a test suite, small enough to keep one agent
// from taking the host down.
const (
	DefaultAgentPidsLimit = 4096
	DefaultAgentMemory    = "8g"
)

// ParseMemory reads agents.memory: a positive byte count with an optional
// k, m, g or t suffix (powers of 1024, either case, an optional trailing b).
func ParseMemory(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "b")
	mult := int64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("kmgt", t[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v <= 0 || v > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a memory size", s)
	}
	return v * mult, nil
}

// ControlPlane holds the ports CP and its Ory subprocesses listen on, and the
// tuning of its supervisor and agent watcher.
type ControlPlane struct {
	AdminPort         int `yaml:"admin_port"`
	HealthPort        int `yaml:"health_port"`
	AgentPort         int `yaml:"agent_port"`
	HydraPublicPort   int `yaml:"hydra_public_port"`
	HydraAdminPort    int `yaml:"hydra_admin_port"`
	OathkeeperPort    int `yaml:"oathkeeper_port"`
	OathkeeperAPIPort int `yaml:"oathkeeper_api_port"`
	KratosPublicPort  int `yaml:"kratos_public_port"`
	KratosAdminPort   int `yaml:"kratos_admin_port"`
	// StackPort is the mTLS service the firewall siblings (DNS, proxy)
	// use to fetch their policy and report DNS answers. Only certificates
	// the CP minted for its own siblings are accepted there.
	StackPort int `yaml:"stack_port"`

	Supervisor Supervisor `yaml:"supervisor"`
	Watcher    Watcher    `yaml:"watcher"`
	Sessions   Sessions   `yaml:"sessions"`
}

// Sessions tunes the long-lived Session with each clawkerd.
type Sessions struct {
	// Heartbeat is how often the CP sends a heartbeat; three intervals
	// without a message from the agent mark its Session broken.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// LastSeenFlush is how often heard-from times are written to the
	// registry, in one transaction for all agents.
	LastSeenFlush time.Duration `yaml:"last_seen_flush"`
}

// Supervisor tunes how CP restarts and stops its subsystems.
type Supervisor struct {
	// MaxRestarts is how many restarts of one child are tolerated within
	// RestartWindow before the supervisor gives up.
	MaxRestarts   int           `yaml:"max_restarts"`
	RestartWindow time.Duration `yaml:"restart_window"`
	// DrainStepTimeout bounds each step of the ordered drain.
	DrainStepTimeout time.Duration `yaml:"drain_step_timeout"`
	// StartTimeout bounds each subsystem's start.
	StartTimeout time.Duration `yaml:"start_timeout"`
}

// Watcher tunes drain-to-zero: CP shuts itself down once Grace has elapsed
// and ZeroStreak consecutive polls found no agent containers.
type Watcher struct {
	// Enable false turns drain-to-zero off: the CP then runs until it is
	// stopped. For a CP started by hand on a host, where no agent may ever
	// run.
	Enable       bool          `yaml:"enable"`
	PollInterval time.Duration `yaml:"poll_interval"`
	Grace        time.Duration `yaml:"grace"`
	ZeroStreak   int           `yaml:"zero_streak"`
}

// Firewall controls the firewall stack: the DNS sibling, the egress
// proxy sibling and the eBPF programs on every agent's cgroup.
type Firewall struct {
	Enable bool `yaml:"enable"`
	// ProxyPort is the egress proxy's catch-all listener at <network>.200:
	// TCP without a route is redirected there and decided by SNI/Host.
	ProxyPort int `yaml:"proxy_port"`
	// UpstreamDNS is where the DNS sibling forwards the names the rules
	// allow (ip:port, in order). The default is Docker's embedded resolver
	// as a container on clawker-net sees it, which forwards to whatever
	// the host uses.
	UpstreamDNS []string `yaml:"upstream_dns"`
	// PrivateDestinations are CIDRs an allowed name may resolve into
	// although they are private, loopback, link-local or CGNAT. Empty by
	// default: an allowed name must never become a path to the operator's
	// LAN or a cloud metadata service (DNS rebinding).
	PrivateDestinations []string `yaml:"private_destinations"`
	// AgentToAgent says which agents on the agent network reach each
	// other directly: deny (none), project (agents of the same project),
	// allow (every agent). The stack and the control plane's agent and
	// Hydra ports are reachable whatever it says.
	AgentToAgent string `yaml:"agent_to_agent"`
	// UpstreamCA is extra PEM roots (the PEM itself, or a file holding it,
	// readable where the control plane runs) that an inspected name's
	// upstream certificate may chain to, besides the system roots: for a
	// registry or API behind a private CA. Empty: the system roots alone.
	UpstreamCA string `yaml:"upstream_ca"`
}

// The firewall.agent_to_agent choices.
const (
	AgentToAgentDeny    = "deny"
	AgentToAgentProject = "project"
	AgentToAgentAllow   = "allow"
)

// Monitoring is the egress event log (the netlogger): every decision of
// the eBPF programs as an OpenTelemetry log record sent to a collector.
type Monitoring struct {
	// OTLPEndpoint is the collector's OTLP/gRPC address, host:port (an
	// https:// prefix is accepted; http:// means plaintext and needs
	// OTLPInsecure). Empty turns the netlogger off and the programs' event
	// flag with it, so an unset endpoint costs nothing per connect.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// OTLPCA is the PEM (a file path, or the PEM itself) the collector's
	// certificate must chain to; empty means the system roots.
	OTLPCA string `yaml:"otlp_ca"`
	// OTLPInsecure sends plaintext, for a collector on loopback or the
	// agent network only: the records name every destination an agent
	// tried, which must not cross other networks in clear.
	OTLPInsecure bool `yaml:"otlp_insecure"`
	// EgressEventsPerSecond is each agent cgroup's event budget; the
	// bucket holds one second of it (burst = the same number), beyond
	// which the programs drop events and count them.
	EgressEventsPerSecond int `yaml:"egress_events_per_second"`
}

// DefaultEgressEventsPerSecond is pkg/egress's DefaultEventRate (not
// imported: settings stays free of the BPF libraries).
const DefaultEgressEventsPerSecond = 1000

// maxEgressEventsPerSecond keeps the programs' interval (1s / rate) at
// a microsecond or more.
const maxEgressEventsPerSecond = 1_000_000

// DefaultUpstreamDNS is Docker's embedded resolver, as every container on a
// user-defined network sees it.
const DefaultUpstreamDNS = "127.0.0.11:53"

// Default returns the settings used when settings.yaml is absent, and the
// base that a present file is overlaid onto.
func Default() Settings {
	return Settings{
		ControlPlane: ControlPlane{
			AdminPort:         7443,
			HealthPort:        7080,
			AgentPort:         7444,
			HydraPublicPort:   4444,
			HydraAdminPort:    4445,
			OathkeeperPort:    4456,
			OathkeeperAPIPort: 4457,
			KratosPublicPort:  4433,
			KratosAdminPort:   4434,
			StackPort:         7445,
			Supervisor: Supervisor{
				MaxRestarts:      5,
				RestartWindow:    30 * time.Second,
				DrainStepTimeout: 10 * time.Second,
				StartTimeout:     30 * time.Second,
			},
			Watcher: Watcher{
				Enable:       true,
				PollInterval: 30 * time.Second,
				Grace:        60 * time.Second,
				ZeroStreak:   2,
			},
			Sessions: Sessions{
				Heartbeat:     5 * time.Second,
				LastSeenFlush: 5 * time.Second,
			},
		},
		Firewall:   Firewall{Enable: true, ProxyPort: 15001, UpstreamDNS: []string{DefaultUpstreamDNS}, AgentToAgent: AgentToAgentDeny},
		Agents:     Agents{PidsLimit: DefaultAgentPidsLimit, Memory: DefaultAgentMemory},
		Monitoring: Monitoring{EgressEventsPerSecond: DefaultEgressEventsPerSecond},
	}
}

// NamedPort is a port together with its settings key.
type NamedPort struct {
	Key  string // full dotted key, e.g. "control_plane.admin_port"
	Port int
}

// Ports lists every configured port with its key, in declaration order.
func (s Settings) Ports() []NamedPort {
	cp := s.ControlPlane
	return []NamedPort{
		{"control_plane.admin_port", cp.AdminPort},
		{"control_plane.health_port", cp.HealthPort},
		{"control_plane.agent_port", cp.AgentPort},
		{"control_plane.hydra_public_port", cp.HydraPublicPort},
		{"control_plane.hydra_admin_port", cp.HydraAdminPort},
		{"control_plane.oathkeeper_port", cp.OathkeeperPort},
		{"control_plane.oathkeeper_api_port", cp.OathkeeperAPIPort},
		{"control_plane.kratos_public_port", cp.KratosPublicPort},
		{"control_plane.kratos_admin_port", cp.KratosAdminPort},
		{"control_plane.stack_port", cp.StackPort},
	}
}

// Error is a problem with the settings. Key and Line let callers and tests
// act on the offending setting without parsing the message.
type Error struct {
	File string // settings file; "" when validating in-memory Settings
	Key  string // full dotted key, e.g. "control_plane.admin_port"; "" if the problem is not tied to one key
	Line int    // 1-based line in File; 0 if unknown
	Msg  string // complete description: names the key, what is wrong and how to fix it
}

func (e *Error) Error() string {
	if e.File == "" {
		return e.Msg
	}
	return e.File + ": " + e.Msg
}

// Validate checks value ranges and that no two ports collide. It returns the
// first problem found as an *Error.
func (s Settings) Validate() error {
	seen := make(map[int]string)
	for _, p := range s.Ports() {
		if p.Port < 1 || p.Port > 65535 {
			return invalid(p.Key, "%d is out of range; use a port from 1 to 65535", p.Port)
		}
		if other, dup := seen[p.Port]; dup {
			return invalid(p.Key, "%d is already used by %s; give each port its own number", p.Port, other)
		}
		seen[p.Port] = p.Key
	}

	if p := s.Firewall.ProxyPort; p < 1 || p > 65535 {
		return invalid("firewall.proxy_port", "%d is out of range; use a port from 1 to 65535", p)
	}

	if err := validateFirewallLists(s.Firewall); err != nil {
		return err
	}
	if _, err := UpstreamCAPEM(s.Firewall.UpstreamCA); err != nil {
		return invalid("firewall.upstream_ca", "%v; give the PEM of the CA an inspected upstream's certificate chains to (or a file holding it)", err)
	}
	switch s.Firewall.AgentToAgent {
	case AgentToAgentDeny, AgentToAgentProject, AgentToAgentAllow:
	default:
		return invalid("firewall.agent_to_agent", "%q is not a choice; use deny (the default), project or allow", s.Firewall.AgentToAgent)
	}
	if s.Agents.PidsLimit < 1 {
		return invalid("agents.pids_limit", "%d is too small; use a positive number of tasks, such as %d", s.Agents.PidsLimit, DefaultAgentPidsLimit)
	}
	if _, err := ParseMemory(s.Agents.Memory); err != nil {
		return invalid("agents.memory", "%q is not a memory size; write one such as %q or \"512m\"", s.Agents.Memory, DefaultAgentMemory)
	}

	if err := validateMonitoring(s.Monitoring); err != nil {
		return err
	}

	sv, w := s.ControlPlane.Supervisor, s.ControlPlane.Watcher
	if sv.MaxRestarts < 0 {
		return invalid("control_plane.supervisor.max_restarts", "%d is negative; use 0 or more", sv.MaxRestarts)
	}
	durations := []struct {
		key string
		d   time.Duration
	}{
		{"control_plane.supervisor.restart_window", sv.RestartWindow},
		{"control_plane.supervisor.drain_step_timeout", sv.DrainStepTimeout},
		{"control_plane.supervisor.start_timeout", sv.StartTimeout},
		{"control_plane.watcher.poll_interval", w.PollInterval},
		{"control_plane.watcher.grace", w.Grace},
		{"control_plane.sessions.heartbeat", s.ControlPlane.Sessions.Heartbeat},
		{"control_plane.sessions.last_seen_flush", s.ControlPlane.Sessions.LastSeenFlush},
	}
	for _, d := range durations {
		if d.d <= 0 {
			return invalid(d.key, "%s is not positive; use a duration greater than zero, such as \"30s\"", d.d)
		}
	}
	if w.ZeroStreak < 1 {
		return invalid("control_plane.watcher.zero_streak", "%d is too small; use 1 or more", w.ZeroStreak)
	}
	return nil
}

// validateFirewallLists checks firewall.upstream_dns (IPv4 ip:port) and
// firewall.private_destinations (IPv4 CIDRs or addresses).
func validateFirewallLists(f Firewall) error {
	if len(f.UpstreamDNS) == 0 {
		return invalid("firewall.upstream_dns", "is empty; list at least one resolver as ip:port, such as %q", DefaultUpstreamDNS)
	}
	for i, u := range f.UpstreamDNS {
		ap, err := netip.ParseAddrPort(u)
		if err != nil || !ap.Addr().Is4() || ap.Port() == 0 {
			return invalid("firewall.upstream_dns", "entry %d (%q) is not an IPv4 ip:port; write one such as %q", i, u, DefaultUpstreamDNS)
		}
	}
	for i, c := range f.PrivateDestinations {
		if _, err := ParsePrefix(c); err != nil {
			return invalid("firewall.private_destinations", "entry %d (%q) is not an IPv4 CIDR or address; write one such as \"172.30.0.1/32\" or \"10.0.0.0/8\"", i, c)
		}
	}
	return nil
}

// OTLPTarget is monitoring.otlp_endpoint taken apart: the gRPC target
// (host:port) and whether the connection is plaintext.
type OTLPTarget struct {
	HostPort  string
	Host      string
	Plaintext bool
}

// ParseOTLPEndpoint reads monitoring.otlp_endpoint: host:port, or with an
// https:// (TLS) or http:// (plaintext) prefix. insecure is
// monitoring.otlp_insecure, which makes a bare host:port plaintext.
func ParseOTLPEndpoint(endpoint string, insecure bool) (OTLPTarget, error) {
	rest, plain := endpoint, insecure
	if r, ok := strings.CutPrefix(endpoint, "https://"); ok {
		rest, plain = r, false
		if insecure {
			return OTLPTarget{}, fmt.Errorf("%q asks for TLS (https://) but monitoring.otlp_insecure is true; drop one of them", endpoint)
		}
	} else if r, ok := strings.CutPrefix(endpoint, "http://"); ok {
		rest, plain = r, true
	}
	rest = strings.TrimSuffix(rest, "/")
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" || strings.ContainsAny(rest, "/?#") {
		return OTLPTarget{}, fmt.Errorf("%q is not host:port; write the collector's OTLP/gRPC address, such as \"otel-collector:4317\"", endpoint)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return OTLPTarget{}, fmt.Errorf("%q has port %q; use a port from 1 to 65535", endpoint, port)
	}
	return OTLPTarget{HostPort: rest, Host: host, Plaintext: plain}, nil
}

// PlaintextAllowed reports whether a plaintext collector may sit at host:
// a loopback or private address (the agent network is a private bridge),
// or localhost. A name is refused: what it resolves to can change.
func PlaintextAllowed(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate()
}

// LoadOTLPCA reads monitoring.otlp_ca, the PEM itself or a file holding
// it, into a pool; nil for "" (the system roots).
func LoadOTLPCA(v string) (*x509.CertPool, error) {
	if v == "" {
		return nil, nil
	}
	data, err := pemSetting(v)
	if err != nil {
		return nil, err
	}
	return certPool(data)
}

// pemSetting is a setting that holds PEM itself or names a file holding it.
func pemSetting(v string) ([]byte, error) {
	if strings.Contains(v, "-----BEGIN") {
		return []byte(v), nil
	}
	b, err := os.ReadFile(v)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", v, err)
	}
	return b, nil
}

// certPool parses every CERTIFICATE block of data; none is an error.
func certPool(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("no PEM certificate in it")
	}
	return pool, nil
}

// UpstreamCAPEM reads firewall.upstream_ca (the PEM itself or a file
// holding it) and returns the PEM, every certificate in it checked; nil
// for "".
func UpstreamCAPEM(v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	data, err := pemSetting(v)
	if err != nil {
		return nil, err
	}
	if _, err := certPool(data); err != nil {
		return nil, err
	}
	return data, nil
}

func validateMonitoring(m Monitoring) error {
	if r := m.EgressEventsPerSecond; r < 1 || r > maxEgressEventsPerSecond {
		return invalid("monitoring.egress_events_per_second", "%d is out of range; use 1 to %d events per second per agent", r, maxEgressEventsPerSecond)
	}
	if m.OTLPEndpoint == "" {
		return nil
	}
	t, err := ParseOTLPEndpoint(m.OTLPEndpoint, m.OTLPInsecure)
	if err != nil {
		return invalid("monitoring.otlp_endpoint", "%v", err)
	}
	if t.Plaintext && !m.OTLPInsecure {
		return invalid("monitoring.otlp_endpoint", "%q is plaintext; use host:port (TLS with a client certificate), or set monitoring.otlp_insecure: true for a collector on loopback or the agent network", m.OTLPEndpoint)
	}
	if t.Plaintext && !PlaintextAllowed(t.Host) {
		return invalid("monitoring.otlp_insecure", "plaintext to %q is refused: only a collector on loopback or the agent network (a loopback or private IP address) may go without TLS", t.Host)
	}
	if m.OTLPCA != "" {
		if t.Plaintext {
			return invalid("monitoring.otlp_ca", "is set but monitoring.otlp_insecure turns TLS off; remove one of them")
		}
		if _, err := LoadOTLPCA(m.OTLPCA); err != nil {
			return invalid("monitoring.otlp_ca", "%v; give a PEM file (or the PEM itself) of the CA the collector's certificate chains to", err)
		}
	}
	return nil
}

// ParsePrefix reads one firewall.private_destinations entry: an IPv4 CIDR,
// or a plain address meaning /32.
func ParsePrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("%q is not IPv4", s)
		}
		return netip.PrefixFrom(a, 32), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 CIDR", s)
	}
	return p.Masked(), nil
}

func invalid(key, format string, args ...any) *Error {
	return &Error{Key: key, Msg: key + ": " + fmt.Sprintf(format, args...)}
}
