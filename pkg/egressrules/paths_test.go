package egressrules

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	cases := []struct{ in, want string }{
		{"/", "/"},
		{"/v1/models", "/v1/models"},
		{"/v1/", "/v1/"},
		{"/v1/../admin", "/admin"},
		{"//admin", "/admin"},
		{"/v1//admin", "/v1/admin"},
		{"/%2e%2e/admin", "/admin"},
		{"/%2E%2E/admin", "/admin"},
		{"/v1/%2e%2e/admin", "/admin"},
		{"/v1/..%2fadmin", "/admin"},
		{"/v1/..%2Fadmin", "/admin"},
		{"/v1%2fadmin", "/v1/admin"},
		{"/v1/%2f%2fadmin", "/v1/admin"},
		{"/v1/./models", "/v1/models"},
		{"/v1/.", "/v1/"},
		{"/v1/..", "/"},
		{"/..", "/"},
		{"/../../etc/passwd", "/etc/passwd"},
		{"/a/b/../../../c/", "/c/"},
		{"/.%2e/admin", "/admin"},
		{"/%2e/admin", "/admin"},
		{"/v1/models?x=/../admin", "/v1/models"},
		{"/v1/models#frag", "/v1/models"},
		{"/%41%7e%5f", "/A~_"},
		{"/a%3fb", "/a%3Fb"},
		{"/a%252e%252e/x", "/a%252e%252e/x"}, // double encoding stays encoded: one decode upstream is still no dot segment
		{"/caf\xc3\xa9", "/caf%C3%A9"},
		{"/a b", "/a%20b"},
		{"/a\\b", "/a%5Cb"},
		{"/v1;x/../admin", "/admin"},
		{"/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="},
		{"/...", "/..."},
		{"/.a/..b/", "/.a/..b/"},
	}
	for _, c := range cases {
		got, err := NormalizePath(c.in)
		if err != nil || got != c.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestNormalizePathRefuses(t *testing.T) {
	cases := []struct{ in, wantErr string }{
		{"", "empty path"},
		{"v1/models", `does not start with / (write /v1/models)`},
		{"*", "does not start with /"},
		{"http://example.com/x", "does not start with /"},
		{"/a%00b", "control character %00"},
		{"/a\x00b", "control character 0x00"},
		{"/a%0ab", "control character %0A"},
		{"/a\nb", "control character 0x0a"},
		{"/a%zz", "invalid escape at byte 2"},
		{"/a%4", "invalid escape"},
		{"/a%", "invalid escape"},
		{"/%%32%65", "invalid escape"},
		{"/v1/..;/admin", `dot segment with parameters "..;"`},
		{"/v1/.;x/admin", `dot segment with parameters ".;x"`},
		{"/v1/%2e%2e;/admin", `dot segment with parameters "..;"`},
	}
	for _, c := range cases {
		got, err := NormalizePath(c.in)
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("NormalizePath(%q) = %q, %v; want an error with %q", c.in, got, err, c.wantErr)
		}
	}
}

func TestPathRulesCanonical(t *testing.T) {
	got, err := Rule{Dst: "API.example.com", PathRules: []PathRule{
		{Path: "/v1/../v2/", Methods: []string{"post", "GET", " get "}},
		{Path: "~^/admin", Action: "DENY"},
	}}.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	want := Rule{Dst: "api.example.com", Proto: HTTPS, Port: Port(443), Action: Allow, PathDefault: Deny, PathRules: []PathRule{
		{Path: "/v2/", Action: Allow, Methods: []string{"GET", "POST"}},
		{Path: "~^/admin", Action: Deny},
	}}
	if !got.Equal(want) {
		t.Fatalf("Canonical = %+v\nwant %+v", got, want)
	}
	if again, err := got.Canonical(); err != nil || !again.Equal(got) {
		t.Fatalf("canonical form is not a fixed point: %+v, %v", again, err)
	}
	if got.Key() != "api.example.com:https:443" {
		t.Fatalf("path rules changed the key: %s", got.Key())
	}
	// path_default allow is kept; no path rules and no path_default: none.
	if c, _ := (Rule{Dst: "a.example.com", PathDefault: "Allow", PathRules: []PathRule{{Path: "/"}}}).Canonical(); c.PathDefault != Allow {
		t.Fatalf("path_default allow lost: %+v", c)
	}
	if c, _ := (Rule{Dst: "a.example.com"}).Canonical(); c.PathDefault != "" || c.PathRules != nil {
		t.Fatalf("a plain rule got path fields: %+v", c)
	}
	// Wildcards and plain http may carry path rules.
	for _, r := range []Rule{{Dst: ".example.com", PathRules: []PathRule{{Path: "/"}}}, {Dst: "a.example.com", Proto: HTTP, Port: Port(8080), PathRules: []PathRule{{Path: "/"}}}} {
		if _, err := r.Canonical(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
}

func TestPathRulesValidateMessages(t *testing.T) {
	cases := []struct {
		rule Rule
		want string
	}{
		{Rule{Dst: "10.0.0.1", PathRules: []PathRule{{Path: "/"}}},
			`rules[0]: path_rules[0].path "/": path rules apply only to an https or http rule on a name, the connections the proxy can inspect (drop the path rules, or write the rule for a name with proto https or http)`},
		{Rule{Dst: "git.example.com", Proto: SSH, PathRules: []PathRule{{Path: "/"}}},
			`rules[0]: path_rules[0].path "/": path rules apply only to an https or http rule on a name, the connections the proxy can inspect (drop the path rules, or write the rule for a name with proto https or http)`},
		{Rule{Dst: "a.example.com", Action: Deny, PathRules: []PathRule{{Path: "/"}}},
			`rules[0]: path_rules[0].path "/": the rule denies the connection before any request is made, so its path rules would never apply (make the rule action allow, or drop the path rules)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "/ok"}, {Path: "v1"}}},
			`rules[0]: path_rules[1].path "v1": a path starts with / (write /v1, or ~ and a regular expression)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: ""}}},
			`rules[0]: path_rules[0].path "": empty (write a prefix such as /v1/, or ~ and a regular expression such as ~^/v[0-9]+/models$)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "~"}}},
			`rules[0]: path_rules[0].path "~": empty regular expression after ~ (write ~/v[0-9]+/models, or a prefix such as /v1/)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "~/v1/(a"}}},
			"rules[0]: path_rules[0].path \"~/v1/(a\": not a valid RE2 expression: error parsing regexp: missing closing ): `/v1/(a` (see https://github.com/google/re2/wiki/Syntax)"},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: `~/(?=x)`}}},
			"rules[0]: path_rules[0].path \"~/(?=x)\": not a valid RE2 expression: error parsing regexp: invalid or unsupported Perl syntax: `(?=` (see https://github.com/google/re2/wiki/Syntax)"},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "/search?q=x"}}},
			`rules[0]: path_rules[0].path "/search?q=x": a path rule matches the path only, not a query or fragment (write the part before ? or #)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "/a%zz"}}},
			`rules[0]: path_rules[0].path "/a%zz": invalid escape at byte 2 of "/a%zz" (a % is followed by two hex digits)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "/a", Action: "block"}}},
			`rules[0]: path_rules[0].action "block": unknown action (write allow or deny; allow when omitted)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "/a", Methods: []string{"GET", "GE T"}}}},
			`rules[0]: path_rules[0].methods "GE T": not an HTTP method (write GET, POST, PUT, DELETE, ...; omit methods for every method)`},
		{Rule{Dst: "a.example.com", PathRules: []PathRule{{Path: "/v1/"}, {Path: "/v1/./", Action: Deny}}},
			`rules[0]: path_rules[1].path "/v1/./": also the path of path_rules[0] (one path rule per path: give it both methods, or use another path)`},
		{Rule{Dst: "a.example.com", PathDefault: "allow"},
			`rules[0]: path_default "allow": path_default without path_rules decides nothing (add a path rule, or drop path_default)`},
		{Rule{Dst: "a.example.com", PathDefault: "maybe", PathRules: []PathRule{{Path: "/"}}},
			`rules[0]: path_default "maybe": unknown action (write allow or deny; deny when omitted)`},
	}
	for _, c := range cases {
		_, err := Validate([]Rule{c.rule})
		if err == nil || err.Error() != c.want {
			t.Errorf("Validate(%+v):\n got %v\nwant %s", c.rule, err, c.want)
		}
		if err != nil {
			checkFieldErrors(t, err, 1)
		}
	}
}

func mustPaths(t *testing.T, def Action, rules ...PathRule) *PathPolicy {
	t.Helper()
	pp, err := CompilePaths(rules, def)
	if err != nil {
		t.Fatal(err)
	}
	return pp
}

func TestPathPolicyDecide(t *testing.T) {
	pp := mustPaths(t, "",
		PathRule{Path: "/v1/"},
		PathRule{Path: "/v1/admin", Action: Deny},
		PathRule{Path: "/v1/files", Methods: []string{"get"}},
		PathRule{Path: "/v1/files/", Action: Deny, Methods: []string{"DELETE"}},
		PathRule{Path: `~/v[0-9]+/models/[a-z]+`, Action: Deny}, // length 20, longer than "/v1/"
		PathRule{Path: "/abcd"},
		PathRule{Path: "~/abc.", Action: Deny}, // length 5 ties with "/abcd": the earlier rule wins
	)
	cases := []struct {
		method, path string
		allow        bool
		rule         string // "" = path_default or refused
		reason       string
	}{
		{"GET", "/v1/chat", true, "/v1/", `path rule "/v1/" allows GET`},
		{"get", "/v1/chat", true, "/v1/", `path rule "/v1/" allows GET`},
		{"POST", "/v1/admin/users", false, "/v1/admin", `path rule "/v1/admin" denies POST`},
		{"GET", "/v1/../v1/admin", false, "/v1/admin", `path rule "/v1/admin" denies GET`},
		{"GET", "/v1/x/../admin", false, "/v1/admin", `path rule "/v1/admin" denies GET`},
		{"GET", "/v1/%61dmin", false, "/v1/admin", `path rule "/v1/admin" denies GET`},
		{"GET", "/v1//admin", false, "/v1/admin", `path rule "/v1/admin" denies GET`},
		{"GET", "/v1/files/a", true, "/v1/files", `path rule "/v1/files" allows GET`},
		{"PUT", "/v1/files/a", true, "/v1/", `path rule "/v1/" allows PUT`}, // methods filter first: /v1/files is not applicable
		{"DELETE", "/v1/files/a", false, "/v1/files/", `path rule "/v1/files/" denies DELETE`},
		{"GET", "/v1/models/gpt", false, `~/v[0-9]+/models/[a-z]+`, `path rule "~/v[0-9]+/models/[a-z]+" denies GET`},
		{"GET", "/v1/models/gpt/x", true, "/v1/", `path rule "/v1/" allows GET`}, // the regex must match the whole path
		{"GET", "/abcd", true, "/abcd", `path rule "/abcd" allows GET`},
		{"GET", "/abce", false, "~/abc.", `path rule "~/abc." denies GET`},
		{"GET", "/admin", false, "", "no path rule matches; path_default deny"},
		{"GET", "/v1/..", false, "", "no path rule matches; path_default deny"},
		{"GET", "/v1/..%2fadmin", false, "", "no path rule matches; path_default deny"},
		{"GET", "/v1/a%00", false, "", "malformed path refused: control character %00 in path \"/v1/a%00\""},
		{"GET", "/v1/..;/admin", false, "", `malformed path refused: dot segment with parameters "..;" in path "/v1/..;/admin"`},
	}
	for _, c := range cases {
		d := pp.Decide(c.method, c.path)
		rule := ""
		if d.Rule != nil {
			rule = d.Rule.Path
		}
		if d.Allow != c.allow || rule != c.rule || d.Reason != c.reason {
			t.Errorf("Decide(%s %s) = %+v (rule %q); want allow %v by %q, %q", c.method, c.path, d, rule, c.allow, c.rule, c.reason)
		}
	}
	if d := pp.Decide("GET", "/v1/x/../admin"); d.Path != "/v1/admin" {
		t.Errorf("decision path %q, want the normalised /v1/admin", d.Path)
	}

	open := mustPaths(t, Allow, PathRule{Path: "/private/", Action: Deny})
	if d := open.Decide("GET", "/public"); !d.Allow || d.Rule != nil || d.Reason != "no path rule matches; path_default allow" {
		t.Errorf("path_default allow: %+v", d)
	}
	if d := open.Decide("GET", "/x/../private/key"); d.Allow {
		t.Errorf("/x/../private/key slipped past a deny: %+v", d)
	}
	var none *PathPolicy
	if d := none.Decide("GET", "/x"); !d.Allow {
		t.Errorf("nil PathPolicy: %+v", d)
	}
	if d := none.Decide("GET", "x"); d.Allow {
		t.Errorf("nil PathPolicy allows a malformed path: %+v", d)
	}
}

// Equal lengths tie to the earlier rule whatever the kinds; the order is
// the user's, kept by Canonical.
func TestPathPolicyTiesByOrder(t *testing.T) {
	a := mustPaths(t, "", PathRule{Path: "/ab"}, PathRule{Path: "~/a.", Action: Deny})
	b := mustPaths(t, "", PathRule{Path: "~/a.", Action: Deny}, PathRule{Path: "/ab"})
	if d := a.Decide("GET", "/ab"); !d.Allow || d.Rule.Path != "/ab" {
		t.Errorf("first rule /ab should win: %+v", d)
	}
	if d := b.Decide("GET", "/ab"); d.Allow || d.Rule.Path != "~/a." {
		t.Errorf("first rule ~/a. should win: %+v", d)
	}
}

func TestDecisionPaths(t *testing.T) {
	p := Compile([]Entry{
		{ID: 1, Rule: Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v1/"}}}},
		{ID: 2, Rule: Rule{Dst: ".example.com"}},
		{ID: 3, Rule: Rule{Dst: "api.example.com", Proto: HTTP}},
		{ID: 4, Rule: Rule{Dst: ".inspect.example.org", PathRules: []PathRule{{Path: "/", Methods: []string{"GET"}}}}},
		{ID: 5, Rule: Rule{Dst: "deny.inspect.example.org", Action: Deny}},
	}, nil)
	cases := []struct {
		host    string
		proto   Proto
		id      uint32
		allow   bool
		inspect bool
	}{
		{"api.example.com", HTTPS, 1, true, true},
		{"API.example.com.", HTTPS, 1, true, true},
		{"other.example.com", HTTPS, 2, true, false},
		{"api.example.com", HTTP, 3, true, false},
		{"a.b.inspect.example.org", HTTPS, 4, true, true},
		{"deny.inspect.example.org", HTTPS, 5, false, false},
	}
	for _, c := range cases {
		port := uint16(443)
		if c.proto == HTTP {
			port = 80
		}
		d := p.Decide(c.host, c.proto, port)
		if d.Rule == nil || d.Rule.ID != c.id || d.Allow != c.allow || (d.Paths != nil) != c.inspect {
			t.Errorf("Decide(%s %s) = %+v; want rule %d allow %v inspect %v", c.host, c.proto, d, c.id, c.allow, c.inspect)
		}
	}
	d := p.Decide("api.example.com", HTTPS, 443)
	if pd := d.Paths.Decide("GET", "/v1/x"); !pd.Allow {
		t.Errorf("/v1/x: %+v", pd)
	}
	if pd := d.Paths.Decide("GET", "/v2/x"); pd.Allow {
		t.Errorf("/v2/x allowed under path_default deny: %+v", pd)
	}
	if pd := p.Decide("x.inspect.example.org", HTTPS, 443).Paths.Decide("POST", "/"); pd.Allow {
		t.Errorf("POST allowed by a GET-only rule: %+v", pd)
	}
}

func TestPathRulesYAMLRoundTrip(t *testing.T) {
	data := []byte(`rules:
  - dst: api.example.com
    path_rules:
      - path: /v1/
        methods: [get, POST]
      - path: "~^/v[0-9]+/admin"
        action: deny
    path_default: allow
  - dst: example.org
`)
	rules, err := parseRules(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{
		{Dst: "api.example.com", Proto: HTTPS, Port: Port(443), Action: Allow, PathDefault: Allow, PathRules: []PathRule{
			{Path: "/v1/", Action: Allow, Methods: []string{"GET", "POST"}},
			{Path: "~^/v[0-9]+/admin", Action: Deny},
		}},
		{Dst: "example.org", Proto: HTTPS, Port: Port(443), Action: Allow},
	}
	if len(rules) != 2 || !rules[0].Equal(want[0]) || !rules[1].Equal(want[1]) {
		t.Fatalf("parsed %+v\nwant %+v", rules, want)
	}
	enc, err := encodeRules(rules)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"path_rules:", "path: /v1/", "- GET", "path_default: allow"} {
		if !strings.Contains(string(enc), s) {
			t.Errorf("encoded file lacks %q:\n%s", s, enc)
		}
	}
	if strings.Contains(string(enc[strings.Index(string(enc), "example.org"):]), "path") {
		t.Errorf("a plain rule is written with path fields:\n%s", enc)
	}
	back, err := parseRules(enc)
	if err != nil || len(back) != 2 || !back[0].Equal(rules[0]) || !back[1].Equal(rules[1]) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
}

func TestPathRulesYAMLErrors(t *testing.T) {
	data := []byte(`rules:
  - dst: api.example.com
    path_rules:
      - path: /ok
      - [x]
      - path: [a]
        colour: red
      - action: deny
      - path: /m
        methods: GET
      - path: /n
        methods: [[GET]]
  - dst: b.example.com
    path_rules: /v1/
`)
	_, err := parseRules(data)
	if err == nil {
		t.Fatal("accepted")
	}
	got := err.Error()
	for _, want := range []string{
		`rules[0]: path_rules[1] "": not a mapping (write path_rules:`,
		`rules[0]: path_rules[2].path "": not a single value (write path: /v1/ or path: ~^/v[0-9]+/, action: allow or deny)`,
		`rules[0]: path_rules[2].colour "red": unknown field (the fields of a path rule are path, action and methods)`,
		`rules[0]: path_rules[3].path "": missing (write path: /v1/, or ~ and a regular expression)`,
		`rules[0]: path_rules[4].methods "GET": not a list of methods (write methods: [GET, POST])`,
		`rules[0]: path_rules[5].methods "": not a list of methods (write methods: [GET, POST])`,
		`rules[1]: path_rules "/v1/": not a list (write path_rules:`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("error lacks %q:\n%s", want, got)
		}
	}
	checkFieldErrors(t, err, 2)
}

// FuzzNormalizePath: never panics; an accepted path starts with "/", has
// no "." or ".." segment and no "//", and is a fixed point; a rule whose
// prefix is the normalised path matches the raw path through Decide.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/v1/../admin", "//admin", "/%2e%2e/admin", "/v1/%2e%2e/admin", "/v1/..%2fadmin",
		"/a%2f%2fb", "/a%00", "/%zz", "/..;/x", "/a?b/../c", "/caf\xc3\xa9", "/%2E.", "/.%2e%2f..%2F", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := NormalizePath(raw)
		if err != nil {
			if p != "" {
				t.Fatalf("NormalizePath(%q) returned %q with its error", raw, p)
			}
			return
		}
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") {
			t.Fatalf("NormalizePath(%q) = %q", raw, p)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("NormalizePath(%q) = %q keeps a dot segment", raw, p)
			}
		}
		if again, err := NormalizePath(p); err != nil || again != p {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", raw, p, again, err)
		}
		pp, err := CompilePaths([]PathRule{{Path: p, Action: Deny}}, Allow)
		if err != nil {
			t.Fatalf("the normalised path %q is not a valid rule path: %v", p, err)
		}
		if d := pp.Decide("GET", raw); d.Allow || d.Path != p {
			t.Fatalf("a deny rule for %q does not catch %q: %+v", p, raw, d)
		}
	})
}

// The siblings get path rules in the policy doc (JSON) and decide with
// them as the control plane compiled them.
func TestDocJSONPathRules(t *testing.T) {
	doc := Doc{Generation: 3, Rules: []Entry{{ID: 1, Rule: Rule{Dst: "api.example.com", PathDefault: Allow,
		PathRules: []PathRule{{Path: "/admin/", Action: Deny, Methods: []string{"POST"}}}}}}}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"path_rules":[{"path":"/admin/","action":"deny","methods":["POST"]}],"path_default":"allow"`) {
		t.Fatalf("doc JSON %s", data)
	}
	var back Doc
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	p, err := back.Compile()
	if err != nil {
		t.Fatal(err)
	}
	d := p.Decide("api.example.com", HTTPS, 443)
	if d.Paths == nil {
		t.Fatalf("no path policy after the JSON round trip: %+v", d)
	}
	if pd := d.Paths.Decide("POST", "/x/../admin/users"); pd.Allow {
		t.Errorf("POST /admin/users allowed: %+v", pd)
	}
	if pd := d.Paths.Decide("GET", "/admin/users"); !pd.Allow {
		t.Errorf("GET /admin/users refused: %+v", pd)
	}
	bad := Doc{Rules: []Entry{{ID: 1, Rule: Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "~("}}}}}}
	if _, err := bad.Compile(); err == nil || !strings.Contains(err.Error(), `rules[0]: path_rules[0].path "~(": not a valid RE2 expression`) {
		t.Errorf("bad regex in a doc: %v", err)
	}
}

// BenchmarkPathDecide is the proxy's per-request cost on an inspected
// connection: normalise and match against a few literal and regex rules.
func BenchmarkPathDecide(b *testing.B) {
	pp, err := CompilePaths([]PathRule{
		{Path: "/v1/"}, {Path: "/v1/admin", Action: Deny}, {Path: "/v1/files", Methods: []string{"GET"}},
		{Path: `~/v[0-9]+/models/[a-z]+`, Action: Deny}, {Path: "/static/"},
	}, "")
	if err != nil {
		b.Fatal(err)
	}
	for _, path := range []string{"/v1/chat/completions", "/v1/x/../admin/users?x=1"} {
		b.Run(strings.ReplaceAll(path, "/", "_"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pp.Decide("POST", path)
			}
		})
	}
}

// A plain allow rule whose ports overlap an inspected one's does not
// switch inspection off, whichever sorts first.
func TestDecisionPathsOverlappingPorts(t *testing.T) {
	p := Compile([]Entry{
		{ID: 1, Rule: Rule{Dst: "api.example.com", Port: PortRange{1, 65535}}},
		{ID: 2, Rule: Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v1/"}}}},
	}, nil)
	if d := p.Decide("api.example.com", HTTPS, 443); !d.Allow || d.Rule.ID != 2 || d.Paths == nil {
		t.Fatalf("443: %+v", d)
	}
	if d := p.Decide("api.example.com", HTTPS, 8443); !d.Allow || d.Rule.ID != 1 || d.Paths != nil {
		t.Fatalf("8443: %+v", d)
	}
}

// FuzzPathRules compiles up to four fuzzed path rules (one a line:
// "path methods" with a leading "!" for deny) and decides a fuzzed request
// under them. Properties: no panic; a rejected rule set is one *FieldError
// per problem naming path_rules[i] or path_default; otherwise the decision
// is the longest applicable rule's, the first of equal length, or
// path_default when none applies, and a malformed path is denied.
func FuzzPathRules(f *testing.F) {
	f.Add("/v1/ GET,POST\n!/v1/admin\n~/v[0-9]+/x", false, "GET", "/v1/../v1/admin/x")
	f.Add("/ab\n!~/a.", true, "POST", "/ab")
	f.Add("!/private/ delete\n~(", true, "DELETE", "//private/%2e/k")
	f.Add("/a?b\nv1\n/x GE T", false, "get", "/x")
	f.Fuzz(func(t *testing.T, spec string, defaultAllow bool, method, raw string) {
		var rules []PathRule
		lines := strings.Split(spec, "\n")
		for _, line := range lines[:min(4, len(lines))] {
			pr := PathRule{Action: Allow}
			if strings.HasPrefix(line, "!") {
				pr.Action, line = Deny, line[1:]
			}
			path, methods, _ := strings.Cut(line, " ")
			pr.Path = path
			if methods != "" {
				pr.Methods = strings.Split(methods, ",")
			}
			rules = append(rules, pr)
		}
		def := Deny
		if defaultAllow {
			def = Allow
		}
		pp, err := CompilePaths(rules, def)
		if err != nil {
			for _, fe := range checkFieldErrors(t, err, 0) {
				if !strings.HasPrefix(fe.Field, "path_rules[") && fe.Field != fieldPathDefault {
					t.Fatalf("rejection names %q", fe.Field)
				}
			}
			return
		}
		d := pp.Decide(method, raw)
		norm, nerr := NormalizePath(raw)
		if nerr != nil {
			if d.Allow || d.Rule != nil {
				t.Fatalf("malformed %q decided %+v", raw, d)
			}
			return
		}
		if d.Path != norm {
			t.Fatalf("decision path %q, normalised %q", d.Path, norm)
		}
		m := strings.ToUpper(method)
		applies := func(pr PathRule) bool {
			if len(pr.Methods) > 0 && !slices.Contains(pr.Methods, m) {
				return false
			}
			if pr.IsRegex() {
				return regexp.MustCompile(`^(?:` + pr.Path[1:] + `)$`).MatchString(norm)
			}
			return strings.HasPrefix(norm, pr.Path)
		}
		weight := func(pr PathRule) int { return len(strings.TrimPrefix(pr.Path, "~")) }
		var want *PathRule
		canon, _ := CompilePaths(rules, def) // the canonical rules, in order
		for i := range canon.rules {
			pr := canon.rules[i].rule
			if applies(*pr) && (want == nil || weight(*pr) > weight(*want)) {
				want = pr
			}
		}
		switch {
		case want == nil:
			if d.Rule != nil || d.Allow != defaultAllow {
				t.Fatalf("%s %q: no rule applies, decided %+v", m, norm, d)
			}
		case d.Rule == nil || !d.Rule.Equal(*want) || d.Allow != (want.Action == Allow):
			t.Fatalf("%s %q: decided %+v, want rule %+v", m, norm, d, want)
		}
	})
}
