package ory_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/settings"
)

func TestMain(m *testing.M) { cptest.Main(m) }

func testConfig(t *testing.T) ory.Config {
	t.Helper()
	dir := t.TempDir()
	return ory.Config{
		RunDir:   filepath.Join(dir, "run"),
		BindHost: "0.0.0.0",
		Ports: ory.Ports{
			HydraPublic: 4444, HydraAdmin: 4445, KratosPublic: 4433, KratosAdmin: 4434,
			Oathkeeper: 4456, OathkeeperAPI: 4457, Debug: 38123,
		},
	}.FromServerBundle(filepath.Join(dir, "bundle"))
}

// get walks a decoded YAML document along a dotted path ("serve.public.port";
// a numeric segment indexes a list).
func get(t *testing.T, doc any, path string) any {
	t.Helper()
	cur := doc
	for _, seg := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[seg]
			if !ok {
				t.Fatalf("%s: no key %q", path, seg)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i >= len(c) {
				t.Fatalf("%s: bad index %q", path, seg)
			}
			cur = c[i]
		default:
			t.Fatalf("%s: %q under a %T", path, seg, cur)
		}
	}
	return cur
}

func readYAML(t *testing.T, path string) any {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s is not YAML: %v", path, err)
	}
	return doc
}

func want(t *testing.T, doc any, path string, v any) {
	t.Helper()
	got := get(t, doc, path)
	if !equalish(got, v) {
		t.Errorf("%s = %v (%T), want %v", path, got, got, v)
	}
}

func equalish(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func prepare(t *testing.T, cfg ory.Config, name string) ory.Spec {
	t.Helper()
	spec, err := cfg.Prepare(name)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != name || len(spec.Args) < 4 || spec.Args[len(spec.Args)-1] != "--sqa-opt-out" ||
		spec.Args[len(spec.Args)-3] != "--config" || spec.Args[len(spec.Args)-2] != spec.Config {
		t.Errorf("%s args %q", name, spec.Args)
	}
	fi, err := os.Stat(cfg.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("run dir mode %v, want 0700", fi.Mode().Perm())
	}
	return spec
}

func TestHydraConfig(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	// A temporary file a crash left behind is removed.
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(cfg.RunDir, "."+ory.HydraConfigFile+".tmp-123")
	if err := os.WriteFile(stale, []byte("secrets: old"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := prepare(t, cfg, ory.Hydra)
	if strings.Join(spec.Args[:2], " ") != "serve all" {
		t.Errorf("args %q", spec.Args)
	}
	doc := readYAML(t, spec.Config)
	want(t, doc, "dsn", "memory")
	want(t, doc, "serve.public.host", "0.0.0.0")
	want(t, doc, "serve.public.port", 4444)
	want(t, doc, "serve.public.tls.enabled", true)
	want(t, doc, "serve.public.tls.cert.path", cfg.TLSCertFile)
	want(t, doc, "serve.public.tls.key.path", cfg.TLSKeyFile)
	want(t, doc, "serve.admin.host", "127.0.0.1")
	want(t, doc, "serve.admin.port", 4445)
	want(t, doc, "serve.admin.tls.enabled", false)
	want(t, doc, "urls.self.issuer", "https://127.0.0.1:4444/")
	want(t, doc, "urls.self.public", "https://127.0.0.1:4444/")
	want(t, doc, "strategies.scope", "exact")
	want(t, doc, "sqa.opt_out", true)
	want(t, doc, "log.format", "json")
	sec1 := get(t, doc, "secrets.system.0").(string)
	if len(sec1) < 64 {
		t.Errorf("system secret %d characters, want 64 (32 random bytes)", len(sec1))
	}
	if n := len(get(t, doc, "secrets.system").([]any)); n != 1 {
		t.Errorf("%d system secrets", n)
	}
	// A new secret at every start.
	doc2 := readYAML(t, prepare(t, cfg, ory.Hydra).Config)
	if sec2 := get(t, doc2, "secrets.system.0"); sec2 == sec1 {
		t.Error("the system secret did not change between two starts")
	}
	if cfg.TokenURL() != "https://127.0.0.1:4444/oauth2/token" {
		t.Errorf("token URL %s", cfg.TokenURL())
	}
	// No temporary file is left behind, and Remove removes what was written.
	entries, _ := os.ReadDir(cfg.RunDir)
	if len(entries) != 1 || entries[0].Name() != ory.HydraConfigFile {
		t.Errorf("run dir holds %v", entries)
	}
	spec.Files.Remove()
	if _, err := os.Stat(spec.Config); !os.IsNotExist(err) {
		t.Errorf("config still there after Remove: %v", err)
	}
}

func TestIssuerOverride(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.IssuerURL = "https://192.168.215.202:4444"
	if cfg.Issuer() != "https://192.168.215.202:4444/" || cfg.TokenURL() != "https://192.168.215.202:4444/oauth2/token" {
		t.Errorf("issuer %s token %s", cfg.Issuer(), cfg.TokenURL())
	}
	doc := readYAML(t, prepare(t, cfg, ory.Hydra).Config)
	want(t, doc, "urls.self.issuer", "https://192.168.215.202:4444/")
}

func TestKratosConfig(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	spec := prepare(t, cfg, ory.Kratos)
	if spec.Args[0] != "serve" {
		t.Errorf("args %q", spec.Args)
	}
	doc := readYAML(t, spec.Config)
	want(t, doc, "dsn", "memory")
	want(t, doc, "serve.public.host", "127.0.0.1")
	want(t, doc, "serve.public.port", 4433)
	want(t, doc, "serve.admin.host", "127.0.0.1")
	want(t, doc, "serve.admin.port", 4434)
	want(t, doc, "identity.default_schema_id", ory.KratosSchemaID)
	want(t, doc, "identity.schemas.0.id", ory.KratosSchemaID)
	want(t, doc, "selfservice.flows.registration.enabled", false)
	want(t, doc, "selfservice.methods.password.config.haveibeenpwned_enabled", false)
	if c := get(t, doc, "secrets.cipher.0").(string); len(c) != 32 {
		t.Errorf("cipher secret %d characters, want exactly 32", len(c))
	}
	url := get(t, doc, "identity.schemas.0.url").(string)
	schema := filepath.Join(cfg.RunDir, ory.KratosSchemaFile)
	if url != "file://"+schema {
		t.Errorf("schema url %s", url)
	}
	b, err := os.ReadFile(schema)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("identity schema is not JSON: %v", err)
	}
	want(t, s, "properties.traits.properties.email.format", "email")
	email := get(t, s, "properties.traits.properties.email").(map[string]any)
	if !equalish(email["ory.sh/kratos"], map[string]any{"credentials": map[string]any{"password": map[string]any{"identifier": true}}}) {
		t.Errorf("the email trait is not the login identifier: %v", email)
	}
}

func TestOathkeeperConfig(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	spec := prepare(t, cfg, ory.Oathkeeper)
	doc := readYAML(t, spec.Config)
	want(t, doc, "serve.proxy.host", "0.0.0.0")
	want(t, doc, "serve.proxy.port", 4456)
	want(t, doc, "serve.proxy.tls.cert.path", cfg.TLSCertFile)
	want(t, doc, "serve.api.host", "127.0.0.1")
	want(t, doc, "serve.api.port", 4457)
	want(t, doc, "serve.prometheus.host", "127.0.0.1")
	want(t, doc, "serve.prometheus.port", 0)
	want(t, doc, "authenticators.oauth2_introspection.enabled", true)
	want(t, doc, "authenticators.oauth2_introspection.config.introspection_url", "http://127.0.0.1:4445/admin/oauth2/introspect")
	want(t, doc, "authenticators.oauth2_introspection.config.scope_strategy", "exact")
	rules := filepath.Join(cfg.RunDir, ory.OathkeeperRulesFile)
	want(t, doc, "access_rules.repositories.0", "file://"+rules)
	rdoc := readYAML(t, rules)
	list := rdoc.([]any)
	if len(list) != len(ory.ProtectedPaths) {
		t.Fatalf("%d rules", len(list))
	}
	for i, p := range ory.ProtectedPaths {
		r := list[i]
		if u := get(t, r, "match.url").(string); !strings.HasSuffix(u, p) {
			t.Errorf("rule %d matches %s", i, u)
		}
		want(t, r, "match.methods", []string{"GET"})
		want(t, r, "authenticators.0.handler", "oauth2_introspection")
		want(t, r, "authenticators.0.config.required_scope", []string{ory.ScopeAdmin})
		// The internal debug listener, never the health port.
		want(t, r, "upstream.url", "http://127.0.0.1:38123")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	good := testConfig(t)
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(*ory.Config){
		"run dir":   func(c *ory.Config) { c.RunDir = "relative" },
		"a port":    func(c *ory.Config) { c.Ports.KratosAdmin = 0 },
		"no debug":  func(c *ory.Config) { c.Ports.Debug = 0 },
		"TLS":       func(c *ory.Config) { c.TLSKeyFile = "" },
		"http":      func(c *ory.Config) { c.IssuerURL = "http://127.0.0.1:4444/" },
		"no server": nil,
	}
	for name, mutate := range cases {
		c := good
		if mutate == nil {
			if _, err := c.Prepare("keto"); err == nil {
				t.Errorf("%s: Prepare accepted an unknown server", name)
			}
			continue
		}
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
		if _, err := c.Prepare(ory.Hydra); err == nil {
			t.Errorf("%s: Prepare accepted it", name)
		}
	}
}

func TestPortsFrom(t *testing.T) {
	t.Parallel()
	p := ory.PortsFrom(settings.Default().ControlPlane)
	// No settings key names the debug upstream: the control plane sets it.
	if p != (ory.Ports{HydraPublic: 4444, HydraAdmin: 4445, KratosPublic: 4433, KratosAdmin: 4434, Oathkeeper: 4456, OathkeeperAPI: 4457}) {
		t.Errorf("PortsFrom(defaults) = %+v", p)
	}
}
