package egressrules

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// leafErrors flattens err's errors.Join tree.
func leafErrors(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range u.Unwrap() {
			out = append(out, leafErrors(e)...)
		}
		return out
	}
	return []error{err}
}

// checkFieldErrors asserts that every leaf of err is a *FieldError that
// names its rule (rules[i], i < n; or none when index is -1) and a field,
// and whose message starts with them. fields, when not nil, lists the
// field names allowed.
func checkFieldErrors(t *testing.T, err error, n int, fields ...string) []*FieldError {
	t.Helper()
	var out []*FieldError
	for _, e := range leafErrors(err) {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("rejection %q (%T) is not a *FieldError", e, e)
		}
		// An empty key (`- "": x`) is an unknown field without a name:
		// the line says rules[i] and "unknown field".
		if fe.Field == "" && !strings.Contains(fe.Msg, "unknown field") {
			t.Fatalf("rejection names no field: %q", fe)
		}
		if fields != nil && !slicesContains(fields, fe.Field) {
			t.Fatalf("rejection names field %q, not one of %v: %q", fe.Field, fields, fe)
		}
		prefix := fe.Field + " "
		if fe.Index >= 0 {
			if fe.Index >= n {
				t.Fatalf("rejection names rules[%d] of %d rules: %q", fe.Index, n, fe)
			}
			prefix = "rules[" + strconv.Itoa(fe.Index) + "]: " + prefix
		}
		if !strings.HasPrefix(fe.Error(), prefix) {
			t.Fatalf("rejection %q does not start with %q", fe, prefix)
		}
		out = append(out, fe)
	}
	return out
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ownHost is a host a canonical rule's dst matches: the name itself, a
// wildcard's base name, a CIDR's first address.
func ownHost(r Rule) string {
	if r.IsIP() {
		if p, err := netip.ParsePrefix(r.Dst); err == nil {
			return p.Addr().String()
		}
		return r.Dst
	}
	return strings.TrimPrefix(r.Dst, ".")
}

// FuzzRulesFile feeds arbitrary bytes to the rules file parser (a hand
// edit of egress-rules.yaml). Properties:
//   - no panic;
//   - a rejection is a YAML syntax error, a "line N:" error about the
//     file's shape, or one *FieldError per bad field, each naming
//     rules[i] and the field;
//   - what is accepted is canonical, sorted and one rule per key, and the
//     file the store would rewrite from it reads back as the same rules
//     (the rewrite never changes what the user's rules mean).
func FuzzRulesFile(f *testing.F) {
	for _, s := range []string{
		"",
		"rules:\n",
		"rules:\n  - dst: example.com\n  - dst: .example.org\n    proto: http\n    port: 8000-8100\n  - dst: 10.0.0.0/8\n    proto: tcp\n    port: 5432\n    action: deny\n",
		"rules:\n  - dst: API.Example.COM.\n    port: \"443\"\n  - dst: api.example.com\n    action: deny\n",
		"rules:\n  - &r {dst: 192.0.2.1, proto: ssh}\n  - *r\n",
		"rules:\n  - dst: example.com\n    dst: example.org\n",
		"rules:\n  - dst: *.example.com\n  - dst: localhost\n  - dst: 2001:db8::1\n  - dst: example.com\n    proto: udp\n    port: 0\n    action: maybe\n",
		"rules:\n  - example.com\n  - [a, b]\n  - dst: [x]\n    colour: red\n",
		"rule:\n  - dst: example.com\n",
		"- dst: example.com\n",
		"rules: {dst: example.com}\n",
		"rules:\n  - dst: example.com\n    port: 443-80\n  - dst: example.com\n    port: 70000\n",
		"rules:\n  - dst: api.example.com\n    path_rules:\n      - path: /v1/\n        methods: [get, POST, GET]\n      - path: ~^/v[0-9]+/admin\n        action: deny\n    path_default: allow\n",
		"rules:\n  - dst: .example.com\n    proto: http\n    path_rules:\n      - {path: /a/../b//c/%2e/, action: DENY}\n",
		"rules:\n  - dst: 10.0.0.1\n    path_rules: [{path: v1}, {path: ~(}, {path: /x, methods: GET}, {path: /x}, x]\n    path_default: maybe\n",
		"rules:\n  - dst: example.com\n    path_default: deny\n    path_rules: {path: /}\n",
		"rules:\n  - dst: example.com\n    projects: [web, api, web]\n  - dst: example.com\n  - dst: 10.0.0.1\n    projects: web\n  - dst: x.example.com\n    projects: [Bad, {a: b}, &p web, *p]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := parseRules(data)
		if err != nil {
			msg := err.Error()
			if strings.HasPrefix(msg, "yaml: ") || strings.HasPrefix(msg, "line ") {
				return
			}
			// One line per bad field; the field may be one the user
			// invented (an unknown field is named as written).
			checkFieldErrors(t, err, len(data))
			return
		}
		for i, r := range rules {
			c, err := r.Canonical()
			if err != nil || !c.Equal(r) {
				t.Fatalf("accepted rule %d %+v is not canonical (%+v, %v)", i, r, c, err)
			}
			if i > 0 && compareRules(rules[i-1], r) >= 0 {
				t.Fatalf("accepted rules out of order or duplicated: %+v then %+v", rules[i-1], r)
			}
		}
		encoded, err := encodeRules(rules)
		if err != nil {
			t.Fatalf("encoding accepted rules: %v", err)
		}
		again, err := parseRules(encoded)
		if err != nil {
			t.Fatalf("the rewritten file does not read back: %v\nrules %+v", err, rules)
		}
		if !slices.EqualFunc(again, rules, Rule.Equal) {
			t.Fatalf("the rewritten file reads back as %+v, not %+v", again, rules)
		}
	})
}

// FuzzRule builds one rule from fuzzed fields (as `clawker firewall add`
// and the AdminService take them) and decides a fuzzed connection under
// it. Properties:
//   - no panic;
//   - ParsePortRange's rejection names the port field;
//   - Canonical's and Validate's rejections are *FieldErrors naming
//     dst, proto, port or action (and rules[0] for Validate), and the two
//     agree on which fields are bad;
//   - a canonical rule is a fixed point of Canonical;
//   - compiled alone, the rule applies to its own dst on its own proto
//     and first port (allow iff its action is allow, bar the restricted
//     IP floor, which only ever denies), case and a trailing dot do not
//     change a decision, and any connection it allows is on its proto,
//     inside its port range, decided by it;
//   - Resolvable of its own name is ok exactly for an allow rule.
func FuzzRule(f *testing.F) {
	f.Add("example.com", "", "", "", "example.com", "https", uint16(443))
	f.Add(".example.com", "http", "8000-8100", "allow", "a.b.EXAMPLE.com.", "http", uint16(8080))
	f.Add("10.0.0.0/8", "tcp", "5432", "deny", "10.1.2.3", "tcp", uint16(5432))
	f.Add("0.0.0.0/0", "tcp", "1-65535", "allow", "169.254.169.254", "tcp", uint16(80))
	f.Add("192.0.2.1/32", "SSH", "", "ALLOW", "192.0.2.1", "ssh", uint16(22))
	f.Add("*.example.com", "udp", "0", "maybe", "", "https", uint16(0))
	f.Add("2001:db8::/32", "tcp", "443-80", "", "[2001:db8::1]", "tcp", uint16(443))
	f.Add("localhost", "tcp", "", "", "localhost", "tcp", uint16(1))
	f.Add("a..b.example", "https", "abc", "deny", "a_b.example.com", "https", uint16(443))
	f.Fuzz(func(t *testing.T, dst, proto, port, action, host, hproto string, hport uint16) {
		// Path rules have their own fuzz targets (FuzzPathRules,
		// FuzzNormalizePath); here the connection-level fields only.
		pr, perr := ParsePortRange(port)
		if perr != nil {
			checkFieldErrors(t, perr, 0, fieldPort)
		}
		r := Rule{Dst: dst, Proto: Proto(proto), Port: pr, Action: Action(action)}
		c, cerr := r.Canonical()
		_, verr := Validate([]Rule{r})
		fields := []string{fieldDst, fieldProto, fieldPort, fieldAction}
		if (cerr == nil) != (verr == nil) {
			t.Fatalf("Canonical says %v, Validate says %v", cerr, verr)
		}
		if cerr != nil {
			ce := checkFieldErrors(t, cerr, 0, fields...)
			ve := checkFieldErrors(t, verr, 1, fields...)
			if len(ce) != len(ve) {
				t.Fatalf("Canonical names %d bad fields, Validate %d", len(ce), len(ve))
			}
			for i := range ce {
				if ce[i].Index != -1 || ve[i].Index != 0 || ce[i].Field != ve[i].Field {
					t.Fatalf("Canonical names %+v, Validate %+v", ce[i], ve[i])
				}
			}
			return
		}
		if c2, err := c.Canonical(); err != nil || !c2.Equal(c) {
			t.Fatalf("canonical %+v is not a fixed point: %+v, %v", c, c2, err)
		}

		p := Compile([]Entry{{Rule: c, ID: 7}}, nil)
		own := ownHost(c)
		d := p.Decide(own, c.Proto, c.Port.Lo)
		if d.Rule == nil || d.Rule.ID != 7 {
			t.Fatalf("%+v does not apply to its own dst %q on %s/%d: %+v", c, own, c.Proto, c.Port.Lo, d)
		}
		if d.Allow != (c.Action == Allow) && (d.Allow || !c.IsIP()) {
			t.Fatalf("%+v decides its own dst %q as %+v", c, own, d)
		}
		if up := p.Decide(strings.ToUpper(own)+".", c.Proto, c.Port.Lo); up.Allow != d.Allow {
			t.Fatalf("case or a trailing dot changes the decision on %q: %+v vs %+v", own, up, d)
		}
		if !c.IsIP() {
			ids, ok := p.Resolvable(own)
			if ok != (c.Action == Allow) || (ok && !reflect.DeepEqual(ids, []uint32{7})) {
				t.Fatalf("Resolvable(%q) = %v, %v under %+v", own, ids, ok, c)
			}
		}

		hd := p.Decide(host, Proto(hproto), hport)
		if hd.Allow {
			if hd.Rule == nil || hd.Rule.ID != 7 || c.Action != Allow || Proto(hproto) != c.Proto || !c.Port.Contains(hport) {
				t.Fatalf("%q %s/%d allowed outside %+v: %+v", host, hproto, hport, c, hd)
			}
		}
		if hd.Reason == "" {
			t.Fatalf("decision on %q without a reason: %+v", host, hd)
		}
	})
}

// FuzzDocCompile feeds arbitrary JSON to the policy document the control
// plane pushes to the DNS sibling and the proxy (decoded and compiled as
// they do). Properties:
//   - no panic;
//   - a rejection is one *FieldError per problem, naming rules[i] and its
//     field (dst, proto, port, action, id) or private_destinations[i];
//   - an accepted doc compiles every rule, keeps its generation, and
//     every rule applies to its own dst on its own proto and first port.
func FuzzDocCompile(f *testing.F) {
	for _, s := range []string{
		`{"generation":1,"rules":[]}`,
		`{"generation":3,"rules":[{"dst":"example.com","id":1},{"dst":".example.org","proto":"http","port":"8000-8100","id":2},{"dst":"10.0.0.0/8","proto":"tcp","port":5432,"action":"deny","id":3}],"private_destinations":["172.30.0.1","192.168.0.0/16"]}`,
		`{"rules":[{"dst":"example.com","id":1},{"dst":"example.org","id":1}]}`,
		`{"rules":[{"dst":"example.com","id":1},{"dst":"EXAMPLE.com.","action":"deny","id":1}]}`,
		`{"rules":[{"dst":"","proto":"udp","port":"0","action":"x"}],"private_destinations":["nope","2001:db8::/32"]}`,
		`{"rules":[{"dst":"a.example","port":null},{"dst":"b.example","port":"443"}]}`,
		`{"rules":[{"dst":"api.example.com","id":1,"path_rules":[{"path":"/v1/","methods":["GET"]},{"path":"~^/admin","action":"deny"}],"path_default":"allow"}]}`,
		`{"rules":[{"dst":"10.0.0.1","path_rules":[{"path":"/"}]},{"dst":"x.example","proto":"tcp","port":22,"path_rules":[{"path":"~["}]}]}`,
		`{"rules":[{"dst":"a.example.com","id":1,"projects":["web"]},{"dst":"a.example.com","id":2,"action":"deny"},{"dst":"b.example.com","id":3,"projects":["api","web"]}],"agents":{"172.30.0.5":"web","172.30.0.6":"Bad","x":"api"},"proxies":["172.30.0.200","y"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc Doc
		if err := json.Unmarshal(data, &doc); err != nil {
			return // the siblings refuse a doc that is not JSON before compiling
		}
		p, err := doc.Compile()
		if err != nil {
			if p != nil {
				t.Fatal("Compile returned a policy with its error")
			}
			for _, fe := range checkFieldErrors(t, err, len(doc.Rules)) {
				switch {
				case fe.Index >= 0 && slicesContains([]string{fieldDst, fieldProto, fieldPort, fieldAction, "id", fieldPathDefault}, fe.Field):
				case fe.Index >= 0 && strings.HasPrefix(fe.Field, fieldPathRules+"["):
				case fe.Index < 0 && strings.HasPrefix(fe.Field, "private_destinations["):
				case fe.Index >= 0 && (fe.Field == fieldProjects || strings.HasPrefix(fe.Field, fieldProjects+"[")):
				case fe.Index < 0 && (fe.Field == "agents" || strings.HasPrefix(fe.Field, "agents[") || strings.HasPrefix(fe.Field, "proxies[")):
				default:
					t.Fatalf("rejection names neither a rule's field nor a private destination: %q", fe)
				}
			}
			return
		}
		if p.Len()+len(p.ScopedEntries()) != len(doc.Rules) || p.Generation() != doc.Generation {
			t.Fatalf("compiled %d+%d rules of generation %d from %d of %d", p.Len(), len(p.ScopedEntries()), p.Generation(), len(doc.Rules), doc.Generation)
		}
		// Every rule applies in its own scope's view: a scoped rule in
		// each of its projects' views, a global one in the global view.
		for _, e := range append(p.Entries(), p.ScopedEntries()...) {
			view := p
			if len(e.Projects) > 0 {
				view = p.For(e.Projects[0])
				if view.Generation() != p.Generation() {
					t.Fatalf("view of %s: generation %d", e.Projects[0], view.Generation())
				}
			}
			own := ownHost(e.Rule)
			d := view.Decide(own, e.Proto, e.Port.Lo)
			if d.Rule == nil {
				t.Fatalf("no rule applies to %q on %s/%d, the dst of %+v: %+v", own, e.Proto, e.Port.Lo, e, d)
			}
			// Inspection follows the deciding rule: an allow with path
			// rules, never anything else.
			if want := d.Allow && d.Rule.Inspected(); (d.Paths != nil) != want || d.Paths.Len() != len(d.Rule.PathRules) && want {
				t.Fatalf("%q on %s/%d decided by %+v with Paths %v", own, e.Proto, e.Port.Lo, d.Rule, d.Paths)
			}
		}
	})
}

// FuzzResolvable builds a policy of a few rules over overlapping names
// (exact, wildcards of several depths, allow and deny, port ranges) from
// the fuzz bytes and checks the DNS sibling's question against the
// proxy's: Resolvable(name) is ok exactly when Decide allows the name on
// some proto and port, and every rule Decide allows it by is among the
// ids Resolvable reports (the rules the kernel map learns the answers
// under). Decide only changes where a rule's range starts or ends, so
// checking those ports covers every port.
func FuzzResolvable(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 1, 0, 4, 1}, "a.example.com")
	f.Add([]byte{1, 2, 0, 0, 2, 1, 0, 0, 3, 1, 1, 1}, "b.a.example.com")
	f.Add([]byte{1, 0, 0x20, 0x40, 0, 1, 0, 0x10, 0xff}, "example.com.")
	f.Add([]byte{5, 3, 7, 7, 0, 6, 1, 3, 3}, "x.example.org")
	names := []string{"example.com", ".example.com", "a.example.com", ".a.example.com", "b.a.example.com", "example.org", ".example.org"}
	protos := []Proto{HTTPS, HTTP, TCP, SSH}
	f.Fuzz(func(t *testing.T, spec []byte, name string) {
		var entries []Entry
		for i := 0; i+3 < len(spec) && len(entries) < 6; i += 4 {
			lo := uint16(spec[i+2])*257 + 1 // spread over 1..65536
			hi := lo + uint16(spec[i+3])*7
			if hi < lo {
				hi = 65535
			}
			action := Allow
			if spec[i+1]&0x80 != 0 {
				action = Deny
			}
			entries = append(entries, Entry{ID: uint32(len(entries) + 1), Rule: Rule{
				Dst: names[int(spec[i])%len(names)], Proto: protos[int(spec[i+1])%len(protos)], Port: PortRange{Lo: lo, Hi: hi}, Action: action,
			}})
		}
		p := Compile(entries, nil)
		ids, ok := p.Resolvable(name)

		starts := []int{1}
		for _, e := range p.Entries() {
			starts = append(starts, int(e.Port.Lo), int(e.Port.Hi)+1)
		}
		allowed := false
		for _, proto := range protos {
			for _, port := range starts {
				if port < 1 || port > 65535 {
					continue
				}
				d := p.Decide(name, proto, uint16(port))
				if !d.Allow {
					continue
				}
				allowed = true
				if !slices.Contains(ids, d.Rule.ID) {
					t.Fatalf("%q allowed on %s/%d by rule %d, Resolvable's ids are %v\n%+v", name, proto, port, d.Rule.ID, ids, p.Entries())
				}
			}
		}
		if ok != allowed {
			t.Fatalf("Resolvable(%q) = %v, %v but Decide allows it somewhere: %v\n%+v", name, ids, ok, allowed, p.Entries())
		}
		for _, id := range ids {
			if e := entries[id-1]; e.Action != Allow {
				t.Fatalf("Resolvable(%q) lists deny rule %+v", name, e)
			}
		}
	})
}
