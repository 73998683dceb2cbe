package ory

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/clawker/clawker-cp/pkg/atomicfile"
	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/settings"
)

// The servers, by the name of their binary (and of their child actor).
const (
	Hydra      = "hydra"
	Kratos     = "kratos"
	Oathkeeper = "oathkeeper"
)

// Names lists the servers in start order; stop them in reverse.
var Names = []string{Hydra, Kratos, Oathkeeper}

// LoopbackHost is where every admin and API listener binds.
const LoopbackHost = "127.0.0.1"

// File names inside the run directory.
const (
	HydraConfigFile      = "hydra.yaml"
	KratosConfigFile     = "kratos.yaml"
	KratosSchemaFile     = "operator.schema.json"
	OathkeeperConfigFile = "oathkeeper.yaml"
	OathkeeperRulesFile  = "oathkeeper-rules.yaml"
)

// Scope names and client ids of clawker's OAuth2 clients (pkg/oauth uses the
// same spellings on the client side).
const (
	ClientCLI          = "clawker-cli"
	ClientAgent        = "clawker-agent"
	ScopeAdmin         = "admin"
	ScopeAgentRegister = "agent:self:register"
)

// KratosSchemaID is the one identity schema Kratos knows.
const KratosSchemaID = "operator"

// ProtectedPaths are the paths Oathkeeper proxies to the control plane's
// internal debug listener (Ports.Debug), for bearer tokens with scope admin
// only.
var ProtectedPaths = []string{"/debug/actors", "/debug/state"}

// Ports are the listeners of the three servers (control_plane.* in
// settings.yaml) and the upstream Oathkeeper forwards to.
type Ports struct {
	HydraPublic   int
	HydraAdmin    int
	KratosPublic  int
	KratosAdmin   int
	Oathkeeper    int // the proxy
	OathkeeperAPI int
	// OathkeeperMetrics is the Prometheus listener Oathkeeper always opens;
	// settings have no key for it, so 0 (the default) lets the kernel pick a
	// free loopback port.
	OathkeeperMetrics int
	// Debug is the control plane's internal debug listener on 127.0.0.1
	// (actors/health): the upstream of ProtectedPaths. Settings have no
	// key for it: the control plane binds it at start and sets it here.
	Debug int
}

// PortsFrom takes the ports from settings; Debug is left 0 for the caller
// to set.
func PortsFrom(cp settings.ControlPlane) Ports {
	return Ports{
		HydraPublic:   cp.HydraPublicPort,
		HydraAdmin:    cp.HydraAdminPort,
		KratosPublic:  cp.KratosPublicPort,
		KratosAdmin:   cp.KratosAdminPort,
		Oathkeeper:    cp.OathkeeperPort,
		OathkeeperAPI: cp.OathkeeperAPIPort,
	}
}

// Config is what the three servers are configured from.
type Config struct {
	// RunDir receives the configuration files (created 0700). They are
	// rewritten at every start; Hydra's holds its system secret.
	RunDir string
	// BindHost is the address of the two listeners published by the
	// control plane: Hydra public and the Oathkeeper proxy. "" means
	// 127.0.0.1. Every other listener is on 127.0.0.1.
	BindHost string
	Ports    Ports
	// IssuerURL is Hydra's issuer and public base URL; its token endpoint
	// (the audience of client assertions) is IssuerURL + "oauth2/token".
	// "" means https://127.0.0.1:<HydraPublic>/.
	IssuerURL string
	// TLSCertFile and TLSKeyFile serve Hydra public and the Oathkeeper
	// proxy over TLS: the control plane's server certificate (see
	// FromServerBundle). Both are required.
	TLSCertFile string
	TLSKeyFile  string
	// CAFile verifies TLSCertFile when the readiness probes speak TLS.
	CAFile string
	// LogLevel of the three servers; "" means warn: at info they log every
	// schema migration of their in-memory database at each start, and
	// every request.
	LogLevel string
	// User, when set, is who the servers run as (ProcessConfig.User).
	// Prepare then makes RunDir and every file in it User's own (0700,
	// 0600), creates RunDir's missing parents 0755 and refuses a RunDir
	// User cannot reach; Hydra and Oathkeeper get copies of the TLS
	// certificate and key in RunDir, so the server bundle directory
	// stays the control plane's alone.
	User *User
}

// FromServerBundle sets the TLS files from the control plane's server
// bundle directory (pkg/certs: server.crt, server.key, ca.crt).
func (c Config) FromServerBundle(dir string) Config {
	c.TLSCertFile = filepath.Join(dir, certs.ServerCertFile)
	c.TLSKeyFile = filepath.Join(dir, certs.ServerKeyFile)
	c.CAFile = filepath.Join(dir, certs.CACertFile)
	return c
}

func (c Config) bindHost() string {
	if c.BindHost == "" {
		return LoopbackHost
	}
	return c.BindHost
}

// Issuer is Hydra's issuer URL, always with a trailing slash.
func (c Config) Issuer() string {
	if c.IssuerURL == "" {
		return "https://" + hostPort(LoopbackHost, c.Ports.HydraPublic) + "/"
	}
	if !strings.HasSuffix(c.IssuerURL, "/") {
		return c.IssuerURL + "/"
	}
	return c.IssuerURL
}

// TokenURL is Hydra's token endpoint as Hydra computes it, the audience a
// client assertion must name.
func (c Config) TokenURL() string { return c.Issuer() + "oauth2/token" }

// HydraAdminURL is the base of Hydra's admin API.
func (c Config) HydraAdminURL() string { return "http://" + hostPort(LoopbackHost, c.Ports.HydraAdmin) }

// HydraPublicURL is Hydra's public base on loopback (for probes).
func (c Config) HydraPublicURL() string {
	return "https://" + hostPort(LoopbackHost, c.Ports.HydraPublic)
}

// KratosAdminURL is the base of Kratos's admin API.
func (c Config) KratosAdminURL() string {
	return "http://" + hostPort(LoopbackHost, c.Ports.KratosAdmin)
}

// KratosPublicURL is the base of Kratos's public API.
func (c Config) KratosPublicURL() string {
	return "http://" + hostPort(LoopbackHost, c.Ports.KratosPublic)
}

// OathkeeperAPIURL is the base of Oathkeeper's API.
func (c Config) OathkeeperAPIURL() string {
	return "http://" + hostPort(LoopbackHost, c.Ports.OathkeeperAPI)
}

// OathkeeperProxyURL is the proxy's base on loopback.
func (c Config) OathkeeperProxyURL() string {
	return c.proxyScheme() + "://" + hostPort(LoopbackHost, c.Ports.Oathkeeper)
}

func (c Config) proxyScheme() string {
	if c.TLSCertFile != "" {
		return "https"
	}
	return "http"
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// Validate reports the first missing or bad field.
func (c Config) Validate() error {
	if c.RunDir == "" || !filepath.IsAbs(c.RunDir) {
		return fmt.Errorf("ory: run dir %q must be an absolute path", c.RunDir)
	}
	ports := []struct {
		name string
		port int
	}{
		{"hydra_public_port", c.Ports.HydraPublic}, {"hydra_admin_port", c.Ports.HydraAdmin},
		{"kratos_public_port", c.Ports.KratosPublic}, {"kratos_admin_port", c.Ports.KratosAdmin},
		{"oathkeeper_port", c.Ports.Oathkeeper}, {"oathkeeper_api_port", c.Ports.OathkeeperAPI},
		{"the internal debug listener's port", c.Ports.Debug},
	}
	for _, p := range ports {
		if p.port < 1 || p.port > 65535 {
			return fmt.Errorf("ory: %s %d is not a port", p.name, p.port)
		}
	}
	if c.TLSCertFile == "" || c.TLSKeyFile == "" {
		return errors.New("ory: Hydra's public port needs a TLS certificate and key (the control plane's server bundle)")
	}
	u, err := url.Parse(c.Issuer())
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("ory: issuer %q must be an https URL", c.Issuer())
	}
	if c.User != nil {
		return c.User.validate()
	}
	return nil
}

// secret returns n random bytes, hex-encoded (2n characters).
func secret(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("ory: generating a secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// HydraConfig renders Hydra's configuration. The system secret (32 random
// bytes, 64 hex characters) is new at every call: with DSN=memory nothing
// outlives the process that the secret protects.
func (c Config) HydraConfig() ([]byte, error) {
	sys, err := secret(32)
	if err != nil {
		return nil, err
	}
	doc := map[string]any{
		"dsn": "memory",
		"serve": map[string]any{
			"public": map[string]any{
				"host":        c.bindHost(),
				"port":        c.Ports.HydraPublic,
				"request_log": noHealthLog,
				"tls": map[string]any{
					"enabled": true,
					"cert":    map[string]any{"path": c.TLSCertFile},
					"key":     map[string]any{"path": c.TLSKeyFile},
				},
			},
			// Plain HTTP on loopback: only the control plane talks to it.
			"admin": map[string]any{
				"host":        LoopbackHost,
				"port":        c.Ports.HydraAdmin,
				"request_log": noHealthLog,
				"tls":         map[string]any{"enabled": false},
			},
		},
		"urls": map[string]any{
			"self": map[string]any{
				"issuer": c.Issuer(),
				"public": c.Issuer(),
				"admin":  c.HydraAdminURL() + "/",
			},
		},
		"secrets": map[string]any{"system": []string{sys}},
		// "admin" must be asked for as "admin": no wildcard matching.
		"strategies": map[string]any{"scope": "exact", "access_token": "opaque"},
		"log":        c.logSection("warn"),
		"sqa":        map[string]any{"opt_out": true},
	}
	return yaml.Marshal(doc)
}

// noHealthLog keeps the servers from logging every /healthz probe.
var noHealthLog = map[string]any{"disable_for_health": true}

// KratosVersion is the Kratos release the configuration is written for
// (Kratos warns when its configuration names no version).
const KratosVersion = "v1.3.1"

// logSection is the servers' log block: JSON lines, which the control plane
// copies with a "<name>: " prefix. Kratos spells warn "warning".
func (c Config) logSection(warn string) map[string]any {
	level := c.LogLevel
	if level == "" {
		level = "warn"
	}
	if level == "warn" || level == "warning" {
		level = warn
	}
	return map[string]any{"level": level, "format": "json"}
}

// KratosSchema is the operator identity schema: one trait, the operator's
// email address, which is also the login identifier.
func KratosSchema() []byte {
	return []byte(`{
  "$id": "https://clawker.dev/schemas/operator.schema.json",
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "clawker operator",
  "type": "object",
  "properties": {
    "traits": {
      "type": "object",
      "properties": {
        "email": {
          "type": "string",
          "format": "email",
          "title": "Email",
          "ory.sh/kratos": {
            "credentials": { "password": { "identifier": true } }
          }
        }
      },
      "required": ["email"],
      "additionalProperties": false
    }
  }
}
`)
}

// KratosConfig renders Kratos's configuration. Kratos is there as the
// operator identity store: one schema (operator, an email trait), no
// self-service flow enabled yet (registration is off, nothing mails), and
// it is probed by /healthz like the other servers. Its secrets are random
// per start, like Hydra's, for the same reason (DSN=memory).
func (c Config) KratosConfig(schemaPath string) ([]byte, error) {
	var sec [3]string
	for i, n := range []int{32, 32, 16} { // cipher secrets are exactly 32 characters
		s, err := secret(n)
		if err != nil {
			return nil, err
		}
		sec[i] = s
	}
	doc := map[string]any{
		"version": KratosVersion,
		"dsn":     "memory",
		"serve": map[string]any{
			"public": map[string]any{
				"host":        LoopbackHost,
				"port":        c.Ports.KratosPublic,
				"base_url":    c.KratosPublicURL() + "/",
				"request_log": noHealthLog,
			},
			"admin": map[string]any{
				"host":        LoopbackHost,
				"port":        c.Ports.KratosAdmin,
				"base_url":    c.KratosAdminURL() + "/",
				"request_log": noHealthLog,
			},
		},
		"identity": map[string]any{
			"default_schema_id": KratosSchemaID,
			"schemas": []any{
				map[string]any{"id": KratosSchemaID, "url": (&url.URL{Scheme: "file", Path: schemaPath}).String()},
			},
		},
		"selfservice": map[string]any{
			"default_browser_return_url": c.KratosPublicURL() + "/",
			"flows": map[string]any{
				"registration": map[string]any{"enabled": false},
			},
			"methods": map[string]any{
				"password": map[string]any{
					"enabled": true,
					// Never ask api.pwnedpasswords.com: the CP does not reach the internet.
					"config": map[string]any{"haveibeenpwned_enabled": false},
				},
			},
		},
		"secrets": map[string]any{
			"default": []string{sec[0]},
			"cookie":  []string{sec[1]},
			"cipher":  []string{sec[2]},
		},
		"log": c.logSection("warning"),
	}
	return yaml.Marshal(doc)
}

// OathkeeperConfig renders Oathkeeper's configuration: the proxy on
// BindHost (TLS with the server certificate), the API and the metrics
// listener on loopback, and one authenticator, oauth2_introspection against
// Hydra's admin API.
func (c Config) OathkeeperConfig(rulesPath string) ([]byte, error) {
	proxy := map[string]any{"host": c.bindHost(), "port": c.Ports.Oathkeeper}
	if c.TLSCertFile != "" {
		proxy["tls"] = map[string]any{
			"cert": map[string]any{"path": c.TLSCertFile},
			"key":  map[string]any{"path": c.TLSKeyFile},
		}
	}
	doc := map[string]any{
		"serve": map[string]any{
			"proxy":      proxy,
			"api":        map[string]any{"host": LoopbackHost, "port": c.Ports.OathkeeperAPI},
			"prometheus": map[string]any{"host": LoopbackHost, "port": c.Ports.OathkeeperMetrics},
		},
		"access_rules": map[string]any{
			"repositories":      []string{(&url.URL{Scheme: "file", Path: rulesPath}).String()},
			"matching_strategy": "regexp",
		},
		"authenticators": map[string]any{
			"oauth2_introspection": map[string]any{
				"enabled": true,
				"config": map[string]any{
					"introspection_url": c.HydraAdminURL() + "/admin/oauth2/introspect",
					"scope_strategy":    "exact",
					// Every request asks Hydra: a token revoked (or
					// forgotten by a restarted Hydra) stops working at once.
					"cache": map[string]any{"enabled": false},
				},
			},
		},
		"authorizers": map[string]any{"allow": map[string]any{"enabled": true}},
		"mutators":    map[string]any{"noop": map[string]any{"enabled": true}},
		"errors": map[string]any{
			"fallback": []string{"json"},
			"handlers": map[string]any{"json": map[string]any{"enabled": true}},
		},
		"log": c.logSection("warn"),
	}
	return yaml.Marshal(doc)
}

// OathkeeperRules renders the access rules: each of ProtectedPaths, GET
// only, needs a bearer token that Hydra says is active and carries scope
// admin, and is forwarded unchanged to the internal debug listener on
// loopback.
func (c Config) OathkeeperRules() ([]byte, error) {
	var rules []any
	for _, p := range ProtectedPaths {
		rules = append(rules, map[string]any{
			"id":          "clawker" + strings.ReplaceAll(p, "/", "-"),
			"description": p + " of the control plane's internal debug listener, for the admin scope",
			"match": map[string]any{
				// Any scheme and host the proxy was reached by; the
				// query string is not part of the match.
				"url":     "<https?>://<[^/]+>" + p,
				"methods": []string{"GET"},
			},
			"authenticators": []any{map[string]any{
				"handler": "oauth2_introspection",
				"config":  map[string]any{"required_scope": []string{ScopeAdmin}},
			}},
			"authorizer": map[string]any{"handler": "allow"},
			"mutators":   []any{map[string]any{"handler": "noop"}},
			"upstream": map[string]any{
				"url":           "http://" + hostPort(LoopbackHost, c.Ports.Debug),
				"preserve_host": false,
			},
		})
	}
	return yaml.Marshal(rules)
}

// Files are the paths Prepare wrote for one server.
type Files []string

// Remove deletes the files (best effort; the run dir stays).
func (f Files) Remove() {
	for _, p := range f {
		_ = os.Remove(p)
	}
}

// Spec is what starting one server needs once its files are written.
type Spec struct {
	Name string
	// Args follow the binary: serve ... --config <Config> --sqa-opt-out.
	Args []string
	// Config is the server's configuration file.
	Config string
	// Files were written for this start; remove them after the process
	// stopped (Hydra's holds its secret).
	Files Files
}

// Prepare validates c, writes the named server's files into RunDir and
// returns its arguments.
func (c Config) Prepare(name string) (Spec, error) {
	if err := c.Validate(); err != nil {
		return Spec{}, err
	}
	if err := c.ensureRunDir(); err != nil {
		return Spec{}, err
	}
	path := func(f string) string { return filepath.Join(c.RunDir, f) }
	spec := Spec{Name: name}
	write := func(file string, data []byte, err error) error {
		if err != nil {
			return err
		}
		removeStaleTemps(path(file))
		if err := WriteFileAtomic(path(file), data); err != nil {
			return err
		}
		spec.Files = append(spec.Files, path(file))
		if c.User != nil {
			// 0600 and root's until here: the window only denies.
			return os.Chown(path(file), c.User.UID, c.User.GID)
		}
		return nil
	}
	var err error
	if c.User != nil && (name == Hydra || name == Oathkeeper) {
		// The servers' own copies of the TLS pair, named per server: a
		// restart of one rewrites (and its stop removes) only its own.
		cert, e1 := os.ReadFile(c.TLSCertFile)
		key, e2 := os.ReadFile(c.TLSKeyFile)
		if err = errors.Join(e1, e2); err == nil {
			if err = write(name+"-tls.crt", cert, nil); err == nil {
				err = write(name+"-tls.key", key, nil)
			}
		}
		if err != nil {
			spec.Files.Remove()
			return Spec{}, fmt.Errorf("ory: copying the TLS certificate and key for %s: %w", name, err)
		}
		c.TLSCertFile, c.TLSKeyFile = path(name+"-tls.crt"), path(name+"-tls.key")
	}
	switch name {
	case Hydra:
		data, e := c.HydraConfig()
		err = write(HydraConfigFile, data, e)
		spec.Config = path(HydraConfigFile)
		spec.Args = []string{"serve", "all", "--config", path(HydraConfigFile), "--sqa-opt-out"}
	case Kratos:
		if err = write(KratosSchemaFile, KratosSchema(), nil); err == nil {
			data, e := c.KratosConfig(path(KratosSchemaFile))
			err = write(KratosConfigFile, data, e)
		}
		spec.Config = path(KratosConfigFile)
		spec.Args = []string{"serve", "--config", path(KratosConfigFile), "--sqa-opt-out"}
	case Oathkeeper:
		rules, e := c.OathkeeperRules()
		if err = write(OathkeeperRulesFile, rules, e); err == nil {
			data, e := c.OathkeeperConfig(path(OathkeeperRulesFile))
			err = write(OathkeeperConfigFile, data, e)
		}
		spec.Config = path(OathkeeperConfigFile)
		spec.Args = []string{"serve", "--config", path(OathkeeperConfigFile), "--sqa-opt-out"}
	default:
		return Spec{}, fmt.Errorf("ory: no server named %q", name)
	}
	if err != nil {
		spec.Files.Remove()
		return Spec{}, fmt.Errorf("ory: writing %s's configuration: %w", name, err)
	}
	return spec, nil
}

// ensureRunDir creates RunDir 0700, User's own when set.
func (c Config) ensureRunDir() error {
	if c.User == nil {
		if err := ensureDir(c.RunDir); err != nil {
			return fmt.Errorf("ory: run dir: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(c.RunDir), 0o755); err != nil {
		return fmt.Errorf("ory: run dir: %w", err)
	}
	if err := c.User.checkReachable(c.RunDir, "run dir"); err != nil {
		return err
	}
	if err := ensureDir(c.RunDir); err != nil {
		return fmt.Errorf("ory: run dir: %w", err)
	}
	if err := os.Chown(c.RunDir, c.User.UID, c.User.GID); err != nil {
		return fmt.Errorf("ory: run dir: making it the servers' (%s; the control plane must be root): %w", c.User, err)
	}
	return nil
}

func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// removeStaleTemps removes what a crash between WriteFileAtomic's create and
// rename left of path (Hydra's may hold a secret). Only path's own temporary
// files: another server's may be in flight.
func removeStaleTemps(path string) {
	dir, base := filepath.Split(path)
	stale, _ := filepath.Glob(filepath.Join(dir, "."+base+".tmp-*"))
	for _, f := range stale {
		_ = os.Remove(f)
	}
}

// WriteFileAtomic writes data to path with mode 0600 (atomicfile.Write): a
// reader never sees a partial file.
func WriteFileAtomic(path string, data []byte) error { return atomicfile.Write(path, data, 0o600) }
