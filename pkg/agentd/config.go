package agentd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/naming"
)

// Defaults of the tunable settings.
const (
	DefaultHeartbeat  = 5 * time.Second
	DefaultMaxBackoff = 10 * time.Second
	DefaultServerName = certs.ServerCommonName
)

// Config is everything Run needs. The first block comes from flags and
// environment variables (ParseArgs); the second is wiring for the caller.
type Config struct {
	CPAddr     string        // host:port of the CP's agent port
	CAFile     string        // PEM of the CA that signed the CP's server cert
	CertFile   string        // this agent's leaves (PEM, one or more for one key: leaves.go)
	KeyFile    string        // its private key (PEM)
	Project    string        // must match the cert's agent URN
	Agent      string        // must match the cert's agent URN
	Home       string        // where .clawker/mcp lives; "" means $HOME, or / if unset
	Heartbeat  time.Duration // 0 means DefaultHeartbeat
	MaxBackoff time.Duration // 0 means DefaultMaxBackoff
	ServerName string        // name the CP's cert must carry; "" means DefaultServerName
	// RequireEnforced holds the user's command (and the Session) back
	// until a Register answers enforced=true: the control plane's egress
	// firewall enforces this agent's container. Until then clawkerd logs
	// waiting_for_enforcement and registers again with the reconnect
	// backoff. The rule holds for every Register, reconnects included.
	RequireEnforced bool
	// AssertionFile holds a client assertion of client clawker-agent
	// (`clawker run` copies one in when the control plane runs Ory).
	// clawkerd exchanges it at TokenURL, once, before its first
	// Register, and sends the access token on Register (token.go).
	// "": no token.
	AssertionFile string
	// TokenURL is Hydra's token endpoint as reached from this container;
	// required with AssertionFile, https only.
	TokenURL string
	// TokenAudience is the token endpoint as Hydra names itself; when set,
	// the assertion must be addressed to it (checked at start).
	TokenAudience string

	// Now is the clock that picks the certificate to present (leaves.go);
	// nil means time.Now.
	Now func() time.Time
	// Logger receives every log line; nil means JSON to stderr.
	Logger *slog.Logger
	// Signals are the signals delivered to clawkerd (signal.Notify).
	// SIGTERM and SIGINT stop the user's command and end Run; the others
	// in ForwardedSignals are passed on to it. nil: none.
	Signals <-chan os.Signal
	// Reap makes clawkerd reap orphaned children, its duty as PID 1.
	Reap bool
	// Stdin, Stdout and Stderr of the user's command; nil means clawkerd's own.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// ConfigError names the setting that is missing or invalid, by flag and by
// environment variable, so a user can fix whichever they used.
type ConfigError struct {
	Flag    string // without dashes
	Env     string
	Problem string
}

func (e *ConfigError) Error() string {
	if e.Env == "" {
		return fmt.Sprintf("--%s: %s", e.Flag, e.Problem)
	}
	return fmt.Sprintf("--%s (env %s): %s", e.Flag, e.Env, e.Problem)
}

// setting describes one flag: its environment fallback and built-in default.
type setting struct {
	name, env, def, usage string
}

var settings = []setting{
	{"cp-addr", "CLAWKERD_CP_ADDR", "", "host:port of the control plane's agent port (required)"},
	{"ca", "CLAWKERD_CA", "", "path to ca.crt, the CA that signed the control plane's certificate (required)"},
	{"cert", "CLAWKERD_CERT", "", "path to this agent's certificate, PEM (required)"},
	{"key", "CLAWKERD_KEY", "", "path to this agent's private key, PEM (required)"},
	{"project", "CLAWKERD_PROJECT", "", "project name; must match the certificate's agent identity (required)"},
	{"agent", "CLAWKERD_AGENT", "", "agent name; must match the certificate's agent identity (required)"},
	{"home", "CLAWKERD_HOME", "$HOME, or / if unset", "home directory; MCP configs go to <home>/.clawker/mcp/<name>.json"},
	{"heartbeat", "CLAWKERD_HEARTBEAT", DefaultHeartbeat.String(), "heartbeat interval; 3 intervals without any message from the control plane break the session"},
	{"max-backoff", "CLAWKERD_MAX_BACKOFF", DefaultMaxBackoff.String(), "cap of the reconnect backoff (starts at 200ms, doubles, full jitter)"},
	{"server-name", "CLAWKERD_SERVER_NAME", DefaultServerName, "name the control plane's certificate must carry"},
	{"require-enforced", "CLAWKERD_REQUIRE_ENFORCED", "false", "open the Session and start the command only once Register answers enforced=true " +
		"(the control plane's egress firewall enforces this container), registering again with backoff until then; the bare flag means true"},
	{"assertion", "CLAWKERD_ASSERTION", "", "path to a client assertion of client clawker-agent (clawker run copies one in when the control plane runs Ory); " +
		"exchanged once at --token-url, before the first Register, for the access token a new agent's Register must carry"},
	{"token-url", "CLAWKERD_TOKEN_URL", "", "the control plane's OAuth2 token endpoint as reached from here, https://<control plane>:<hydra_public_port>/oauth2/token " +
		"(required with --assertion); its certificate is verified with --ca as --server-name"},
	{"token-audience", "CLAWKERD_TOKEN_AUDIENCE", "", "the token endpoint as the control plane names itself; the assertion must be addressed to it " +
		"(checked at start; empty: not checked)"},
}

// boolSettings are the settings given as a boolean flag: the bare flag
// means true, --name=false turns it off.
var boolSettings = map[string]bool{"require-enforced": true}

// boolText is a string flag that may be given bare, as a boolean flag can.
type boolText struct{ s *string }

func (b boolText) String() string {
	if b.s == nil {
		return ""
	}
	return *b.s
}
func (b boolText) Set(v string) error { *b.s = v; return nil }
func (b boolText) IsBoolFlag() bool   { return true }

func settingFor(name string) setting {
	for _, s := range settings {
		if s.name == name {
			return s
		}
	}
	panic("agentd: unknown setting " + name)
}

func configErr(name, format string, args ...any) *ConfigError {
	s := settingFor(name)
	return &ConfigError{Flag: s.name, Env: s.env, Problem: fmt.Sprintf(format, args...)}
}

// Usage is the text of `clawkerd --help`.
func Usage() string {
	var b strings.Builder
	b.WriteString(`Usage: clawkerd [flags] [--] [command [args...]]

clawkerd runs as PID 1 inside a clawker agent container. It registers the
agent with the control plane over mTLS, holds one long-lived Session, runs
the commands the control plane sends down it (init steps, MCP setup,
shutdown), and starts the given command once the first Session is
established (with --require-enforced, only once the control plane also
says its egress firewall enforces this container). The command inherits
clawkerd's stdio; clawkerd exits with the command's exit code. Without a
command, clawkerd holds the Session until the control plane sends Shutdown
or a signal arrives.

With --assertion, clawkerd first exchanges the client assertion at
--token-url for an access token of client clawker-agent (scope
agent:self:register) and sends it on Register: a control plane running Ory
creates a new agent's binding only for such a Register. A failed exchange
is logged (agent_token_failed) and tried again with the reconnect backoff
until the assertion expires; past that, or once the assertion is known to
be used (a restart in the same container), clawkerd registers without a
token (agent_token_abandoned), which the control plane accepts for an
existing binding only.

Flags (each falls back to its environment variable; a flag wins):
`)
	for _, s := range settings {
		fmt.Fprintf(&b, "  --%s\n        %s\n        env %s", s.name, s.usage, s.env)
		if s.def != "" {
			fmt.Fprintf(&b, ", default %s", s.def)
		}
		b.WriteString("\n")
	}
	b.WriteString(`  --help
        print this text and exit 0

Signals: SIGTERM and SIGINT are forwarded to the command's process group;
clawkerd waits for the command and exits with its code. SIGHUP, SIGQUIT,
SIGUSR1 and SIGUSR2 are forwarded and nothing else happens.

Logs: one JSON object per line on stderr, each with an "event" field.

Exit codes:
  0    Shutdown from the control plane, or a signal when no command runs
  1    internal failure
  2    missing or invalid configuration
  3    the control plane refused the registration (PermissionDenied,
       InvalidArgument or another non-transient status); not retried
  126  the command could not be executed
  127  the command was not found
  N    the command's exit code (128+signal if a signal killed it)
`)
	return b.String()
}

// ParseArgs reads the flags in args (clawkerd's arguments without the
// program name), with getenv supplying the fallbacks. It returns the Config
// and the user's command: whatever follows the flags (after "--" if given).
// It returns flag.ErrHelp for --help, and a *ConfigError for anything
// missing or invalid.
func ParseArgs(args []string, getenv func(string) string) (Config, []string, error) {
	fs := flag.NewFlagSet("clawkerd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	vals := map[string]*string{}
	for _, s := range settings {
		if boolSettings[s.name] {
			v := new(string)
			fs.Var(boolText{v}, s.name, s.usage)
			vals[s.name] = v
			continue
		}
		vals[s.name] = fs.String(s.name, "", s.usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, nil, err
		}
		return Config{}, nil, fmt.Errorf("%v (see clawkerd --help)", err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// value is the flag if given, else the environment variable.
	value := func(name string) string {
		if set[name] {
			return *vals[name]
		}
		if getenv == nil {
			return ""
		}
		return getenv(settingFor(name).env)
	}
	duration := func(name string) (time.Duration, error) {
		v := value(name)
		if v == "" {
			return 0, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, configErr(name, "%q is not a duration (e.g. 5s, 500ms)", v)
		}
		if d <= 0 {
			return 0, configErr(name, "must be positive, got %s", v)
		}
		return d, nil
	}
	cfg := Config{
		CPAddr:     value("cp-addr"),
		CAFile:     value("ca"),
		CertFile:   value("cert"),
		KeyFile:    value("key"),
		Project:    value("project"),
		Agent:      value("agent"),
		Home:       value("home"),
		ServerName: value("server-name"),

		AssertionFile: value("assertion"),
		TokenURL:      value("token-url"),
		TokenAudience: value("token-audience"),
	}
	if cfg.Home == "" && getenv != nil {
		cfg.Home = getenv("HOME")
	}
	if cfg.Home == "" {
		cfg.Home = "/"
	}
	var err error
	if cfg.Heartbeat, err = duration("heartbeat"); err != nil {
		return Config{}, nil, err
	}
	if cfg.MaxBackoff, err = duration("max-backoff"); err != nil {
		return Config{}, nil, err
	}
	if v := value("require-enforced"); v != "" {
		if cfg.RequireEnforced, err = strconv.ParseBool(v); err != nil {
			return Config{}, nil, configErr("require-enforced", "%q is not a boolean (true or false, 1 or 0)", v)
		}
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return Config{}, nil, err
	}
	return cfg, fs.Args(), nil
}

// withDefaults fills the zero values of the tunables.
func (c Config) withDefaults() Config {
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.ServerName == "" {
		c.ServerName = DefaultServerName
	}
	if c.Home == "" {
		c.Home = os.Getenv("HOME")
	}
	if c.Home == "" {
		c.Home = "/"
	}
	return c
}

// validate checks everything that does not need the files.
func (c Config) validate() error {
	if c.CPAddr == "" {
		return configErr("cp-addr", "required: host:port of the control plane's agent port")
	}
	host, port, err := net.SplitHostPort(c.CPAddr)
	if err != nil || host == "" {
		return configErr("cp-addr", "%q is not host:port", c.CPAddr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return configErr("cp-addr", "%q: port must be 1-65535", c.CPAddr)
	}
	for _, f := range []struct{ name, val string }{{"ca", c.CAFile}, {"cert", c.CertFile}, {"key", c.KeyFile}} {
		if f.val == "" {
			return configErr(f.name, "required: path to a PEM file")
		}
	}
	if c.Project == "" {
		return configErr("project", "required")
	}
	if !naming.ValidProject(c.Project) {
		return configErr("project", "%q must match "+naming.ProjectRule, c.Project)
	}
	if c.Agent == "" {
		return configErr("agent", "required")
	}
	if !naming.ValidAgent(c.Agent) {
		return configErr("agent", "%q must match "+naming.AgentRule, c.Agent)
	}
	if !filepath.IsAbs(c.Home) {
		return configErr("home", "%q must be an absolute path", c.Home)
	}
	if c.Heartbeat <= 0 {
		return configErr("heartbeat", "must be positive")
	}
	if c.MaxBackoff <= 0 {
		return configErr("max-backoff", "must be positive")
	}
	switch {
	case c.AssertionFile == "" && c.TokenURL != "":
		return configErr("assertion", "required with --token-url: path to the client assertion to exchange there")
	case c.AssertionFile == "" && c.TokenAudience != "":
		return configErr("assertion", "required with --token-audience: path to the client assertion to check")
	case c.AssertionFile != "" && c.TokenURL == "":
		return configErr("token-url", "required with --assertion: where to exchange it")
	case c.TokenURL != "":
		u, err := url.Parse(c.TokenURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
			return configErr("token-url", "%q is not an https URL", c.TokenURL)
		}
	}
	return nil
}

// tlsConfig reads the PEM files and builds the mTLS client config, which
// presents the leaf of the chain valid at the handshake (leaves.go). It
// also checks that the certificates speak for --project/--agent: a
// mismatch is a configuration mistake the CP would only answer with a
// refusal.
func (c Config) tlsConfig() (*tls.Config, *leafChain, error) {
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, nil, configErr("ca", "%v", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(caPEM) {
		return nil, nil, configErr("ca", "%s holds no PEM certificate", c.CAFile)
	}
	certPEM, err := os.ReadFile(c.CertFile)
	if err != nil {
		return nil, nil, configErr("cert", "%v", err)
	}
	keyPEM, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return nil, nil, configErr("key", "%v", err)
	}
	chain, err := loadLeafChain(certPEM, keyPEM, c.Now)
	if err != nil {
		return nil, nil, configErr("cert", "%s: %v", c.CertFile, err)
	}
	if chain.id.Project != c.Project {
		return nil, nil, configErr("project", "%q, but the certificate is for project %q", c.Project, chain.id.Project)
	}
	if chain.id.Agent != c.Agent {
		return nil, nil, configErr("agent", "%q, but the certificate is for agent %q", c.Agent, chain.id.Agent)
	}
	cfg, err := chain.clientConfig(caPEM, c.ServerName)
	if err != nil {
		return nil, nil, configErr("cert", "%v", err)
	}
	return cfg, chain, nil
}
