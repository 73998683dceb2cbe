package egressrules

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// fieldErrors flattens a joined error into its *FieldError parts.
func fieldErrors(t *testing.T, err error) []*FieldError {
	t.Helper()
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		default:
			t.Fatalf("not a *FieldError: %T %v", e, e)
		}
	}
	walk(err)
	return out
}

func TestValidateExactMessages(t *testing.T) {
	cases := []struct {
		rules []Rule
		want  string
	}{
		{[]Rule{{Dst: "example.com"}, {Dst: "exa mple.com"}},
			`rules[1]: dst "exa mple.com": not a domain, IP or CIDR (write example.com, .example.com for it and every subdomain, 10.1.2.3 or 10.0.0.0/8)`},
		{[]Rule{{Dst: "example.com", Proto: "udp"}},
			`rules[0]: proto "udp": unknown protocol (write https, http, tcp or ssh; https when omitted)`},
		{[]Rule{{Dst: "example.com", Action: "block"}},
			`rules[0]: action "block": unknown action (write allow or deny; allow when omitted)`},
		{[]Rule{{Dst: "db.example.com", Proto: TCP}},
			`rules[0]: port "": proto tcp has no default port (write port: 5432 or port: 8000-8100)`},
		{[]Rule{{Dst: "example.com", Port: PortRange{9000, 8000}}},
			`rules[0]: port "9000-8000": the range is reversed (write 8000-9000)`},
		{[]Rule{{Dst: ".com"}},
			`rules[0]: dst ".com": too broad: a wildcard needs at least two labels after the dot (write .example.com)`},
		{[]Rule{{Dst: "2001:db8::1"}},
			`rules[0]: dst "2001:db8::1": IPv6 destinations are not supported: agents have no IPv6 egress (write a name, an IPv4 address or an IPv4 CIDR)`},
		{[]Rule{{Dst: "*.example.com"}},
			`rules[0]: dst "*.example.com": write .example.com instead: a leading dot matches example.com and every subdomain`},
		{[]Rule{{Dst: "localhost"}},
			`rules[0]: dst "localhost": a single-label name is refused: it resolves through the search domains, so it is not the name reached (write the fully qualified name, e.g. localhost.example.com)`},
	}
	for _, c := range cases {
		_, err := Validate(c.rules)
		if err == nil || err.Error() != c.want {
			t.Errorf("Validate(%v):\n got %v\nwant %s", c.rules, err, c.want)
		}
	}
}

func TestCanonicalOmitsIndex(t *testing.T) {
	_, err := Rule{Dst: "exa mple.com"}.Canonical()
	want := `dst "exa mple.com": not a domain, IP or CIDR (write example.com, .example.com for it and every subdomain, 10.1.2.3 or 10.0.0.0/8)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	if fes := fieldErrors(t, err); len(fes) != 1 || fes[0].Index != -1 || fes[0].Field != "dst" {
		t.Fatalf("field errors: %+v", fes)
	}
}

func TestValidateReportsEveryField(t *testing.T) {
	_, err := Validate([]Rule{
		{Dst: "ok.example.com"},
		{Dst: "bad name", Proto: "udp", Action: "maybe"},
		{Dst: "ok2.example.com"},
		{Dst: "10.0.0.0/8", Proto: TCP},
	})
	got := map[string]bool{}
	for _, fe := range fieldErrors(t, err) {
		got[strings.Join([]string{itoa(fe.Index), fe.Field}, ":")] = true
	}
	want := []string{"1:dst", "1:proto", "1:action", "3:port"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("missing %s in %v", w, got)
		}
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestInvalidDsts(t *testing.T) {
	cases := map[string]string{
		"":                                "empty",
		".":                               "empty",
		"a..example.com":                  "empty label",
		"-a.example.com":                  "starts or ends with '-'",
		"a-.example.com":                  "starts or ends with '-'",
		strings.Repeat("a", 64) + ".com":  "longer than 63",
		strings.Repeat("a.", 127) + "com": "longer than 253",
		"10.0.0.256":                      "not a valid IPv4 address",
		"192.0.02.3":                      "not a valid IPv4 address",
		"1.2.3":                           "not a valid IPv4 address",
		"10.0.0.0/33":                     "not a valid CIDR",
		"fd00::/8":                        "IPv6 destinations are not supported",
		"::ffff:10.0.0.1":                 "IPv6 destinations are not supported",
		"example.com:443":                 "write the port in the port field",
		"exa$mple.com":                    "not a domain, IP or CIDR",
		"intranet":                        "single-label",
		".org.":                           "too broad",
		"ex ample.com":                    "not a domain",
		"*.com":                           "too broad",
	}
	for dst, want := range cases {
		_, err := Rule{Dst: dst}.Canonical()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("dst %q: got %v, want a message with %q", dst, err, want)
		}
	}
	for _, ok := range []string{"_sip._tcp.example.com", "x_y.example.com", "a-b.example.com", "xn--bcher-kva.example", strings.Repeat("a", 63) + ".com", "1.example.com"} {
		if _, err := (Rule{Dst: ok}).Canonical(); err != nil {
			t.Errorf("dst %q refused: %v", ok, err)
		}
	}
}

func TestCanonicalAndKey(t *testing.T) {
	cases := []struct {
		in   Rule
		want Rule
		key  string
	}{
		{Rule{Dst: "Example.COM."}, Rule{Dst: "example.com", Proto: HTTPS, Port: Port(443), Action: Allow}, "example.com:https:443"},
		{Rule{Dst: ".Example.com", Proto: "HTTP", Port: PortRange{8000, 8100}}, Rule{Dst: ".example.com", Proto: HTTP, Port: PortRange{8000, 8100}, Action: Allow}, ".example.com:http:8000-8100"},
		{Rule{Dst: "10.1.2.3/8", Proto: TCP, Port: Port(5432)}, Rule{Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432), Action: Allow}, "10.0.0.0/8:tcp:5432"},
		{Rule{Dst: "10.1.2.3/32", Proto: TCP, Port: Port(22)}, Rule{Dst: "10.1.2.3", Proto: TCP, Port: Port(22), Action: Allow}, "10.1.2.3:tcp:22"},
		{Rule{Dst: "github.com", Proto: "SSH"}, Rule{Dst: "github.com", Proto: SSH, Port: Port(22), Action: Allow}, "github.com:ssh:22"},
		{Rule{Dst: "evil.com", Action: "DENY"}, Rule{Dst: "evil.com", Proto: HTTPS, Port: Port(443), Action: Deny}, "evil.com:https:443"},
		{Rule{Dst: "plain.example.com", Proto: HTTP}, Rule{Dst: "plain.example.com", Proto: HTTP, Port: Port(80), Action: Allow}, "plain.example.com:http:80"},
	}
	for _, c := range cases {
		got, err := c.in.Canonical()
		if err != nil || !got.Equal(c.want) {
			t.Errorf("Canonical(%+v) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if k := c.in.Key(); k != c.key {
			t.Errorf("Key(%+v) = %q, want %q", c.in, k, c.key)
		}
	}
	if !(Rule{Dst: ".example.com"}).IsWildcard() || (Rule{Dst: "example.com"}).IsWildcard() {
		t.Error("IsWildcard")
	}
	if !(Rule{Dst: "10.0.0.0/8"}).IsIP() || !(Rule{Dst: "10.1.2.3"}).IsIP() || (Rule{Dst: "example.com"}).IsIP() {
		t.Error("IsIP")
	}
}

func TestPortRange(t *testing.T) {
	if Port(443).String() != "443" || (PortRange{8000, 8100}).String() != "8000-8100" || (PortRange{}).String() != "" {
		t.Fatal("String")
	}
	r := PortRange{8000, 8100}
	for port, want := range map[uint16]bool{7999: false, 8000: true, 8050: true, 8100: true, 8101: false} {
		if r.Contains(port) != want {
			t.Errorf("Contains(%d) != %v", port, want)
		}
	}
	for in, want := range map[string]PortRange{"443": Port(443), "8000-8100": {8000, 8100}, " 22 ": Port(22), "1-65535": {1, 65535}, "": {}} {
		got, err := ParsePortRange(in)
		if err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v", in, got, err)
		}
	}
	for in, want := range map[string]string{
		"0":         `port "0": ports are 1-65535 (write 443 or 8000-8100, or omit port for the proto's default)`,
		"70000":     `port "70000": ports are 1-65535 (write 443 or 8000-8100, or omit port for the proto's default)`,
		"https":     `port "https": not a port or range (write 443 or 8000-8100)`,
		"9000-8000": `port "9000-8000": the range is reversed (write 8000-9000)`,
		"-5":        `port "-5": not a port or range (write 443 or 8000-8100)`,
	} {
		if _, err := ParsePortRange(in); err == nil || err.Error() != want {
			t.Errorf("ParsePortRange(%q): got %v, want %s", in, err, want)
		}
	}
}

func TestPortRangeYAMLRoundTrip(t *testing.T) {
	rules := []Rule{
		{Dst: "example.com", Proto: HTTPS, Port: Port(443), Action: Allow},
		{Dst: ".example.com", Proto: HTTP, Port: PortRange{8000, 8100}, Action: Deny},
	}
	out, err := yaml.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	if !strings.Contains(text, "port: 443\n") || !strings.Contains(text, "port: 8000-8100\n") {
		t.Fatalf("YAML forms:\n%s", text)
	}
	var back []Rule
	if err := yaml.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 2 || !back[0].Equal(rules[0]) || !back[1].Equal(rules[1]) {
		t.Fatalf("round trip: %+v", back)
	}
	// A numeric string and an omitted port on input.
	var in []Rule
	if err := yaml.Unmarshal([]byte("- dst: a.example.com\n  port: \"8443\"\n- dst: b.example.com\n"), &in); err != nil {
		t.Fatal(err)
	}
	if in[0].Port != Port(8443) || !in[1].Port.IsZero() {
		t.Fatalf("got %+v", in)
	}
	if err := yaml.Unmarshal([]byte("- dst: a.example.com\n  port: 70000\n"), &in); err == nil || !strings.Contains(err.Error(), `port "70000"`) {
		t.Fatalf("bad port: %v", err)
	}
	// An omitted port stays omitted.
	out, _ = yaml.Marshal(Rule{Dst: "example.com"})
	if strings.Contains(string(out), "port") {
		t.Fatalf("zero port written: %s", out)
	}
}

func TestPortRangeJSON(t *testing.T) {
	for _, c := range []struct {
		r    PortRange
		json string
	}{{Port(443), `443`}, {PortRange{8000, 8100}, `"8000-8100"`}} {
		out, err := json.Marshal(c.r)
		if err != nil || string(out) != c.json {
			t.Errorf("Marshal(%v) = %s, %v", c.r, out, err)
		}
		var back PortRange
		if err := json.Unmarshal(out, &back); err != nil || back != c.r {
			t.Errorf("Unmarshal(%s) = %v, %v", out, back, err)
		}
	}
	var p PortRange
	if err := json.Unmarshal([]byte(`"443"`), &p); err != nil || p != Port(443) {
		t.Errorf("numeric string: %v %v", p, err)
	}
	if err := json.Unmarshal([]byte(`0`), &p); err == nil {
		t.Error("port 0 accepted")
	}
	out, _ := json.Marshal(Rule{Dst: "example.com"})
	if string(out) != `{"dst":"example.com"}` {
		t.Errorf("zero port in JSON: %s", out)
	}
	var e Entry
	if err := json.Unmarshal([]byte(`{"dst":"a.example.com","proto":"tcp","port":"5432","action":"deny","id":7}`), &e); err != nil {
		t.Fatal(err)
	}
	if want := (Entry{Rule{Dst: "a.example.com", Proto: TCP, Port: Port(5432), Action: Deny}, 7}); !e.Equal(want) {
		t.Errorf("entry: %+v", e)
	}
	var fe *FieldError
	if err := json.Unmarshal([]byte(`{"dst":"x.example.com","port":"8100-8000"}`), &e); !errors.As(err, &fe) || fe.Field != "port" {
		t.Errorf("bad range: %v", err)
	}
}
