package egressrules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Proto is the protocol a rule opens.
type Proto string

// The protocols a rule can name; HTTPS is the default.
const (
	HTTPS Proto = "https"
	HTTP  Proto = "http"
	TCP   Proto = "tcp"
	SSH   Proto = "ssh"
)

// defaultPort is the port a rule gets when it names none; 0 means the
// protocol has no default (tcp) and the rule must name one.
func (p Proto) defaultPort() uint16 {
	switch p {
	case HTTPS:
		return 443
	case HTTP:
		return 80
	case SSH:
		return 22
	}
	return 0
}

func (p Proto) known() bool {
	switch p {
	case HTTPS, HTTP, TCP, SSH:
		return true
	}
	return false
}

// Action is what a rule does with the connections it applies to.
type Action string

// The actions; Allow is the default.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// Rule is one egress rule as the user writes it. Empty fields take their
// defaults in Canonical.
type Rule struct {
	Dst    string    `yaml:"dst" json:"dst"`
	Proto  Proto     `yaml:"proto,omitempty" json:"proto,omitempty"`
	Port   PortRange `yaml:"port,omitempty" json:"port,omitempty,omitzero"`
	Action Action    `yaml:"action,omitempty" json:"action,omitempty"`
	// PathRules makes the proxy inspect this rule's connections (https and
	// http rules on a name only) and decide every request by its path and
	// method; PathDefault decides a request no path rule matches (deny
	// when empty and PathRules is set).
	PathRules   []PathRule `yaml:"path_rules,omitempty" json:"path_rules,omitempty"`
	PathDefault Action     `yaml:"path_default,omitempty" json:"path_default,omitempty"`
	// Projects scopes the rule to the agents of these projects (sorted,
	// deduplicated project names); empty, the rule is global.
	Projects []string `yaml:"projects,omitempty" json:"projects,omitempty"`
}

// Equal reports whether two rules are the same, path rules included (in
// order).
func (r Rule) Equal(o Rule) bool {
	return r.Dst == o.Dst && r.Proto == o.Proto && r.Port == o.Port && r.Action == o.Action &&
		r.PathDefault == o.PathDefault && slices.EqualFunc(r.PathRules, o.PathRules, PathRule.Equal) &&
		slices.Equal(r.Projects, o.Projects)
}

// Inspected reports whether the rule has path rules: its allowed
// connections are inspected by the proxy.
func (r Rule) Inspected() bool { return len(r.PathRules) > 0 }

// Field names as the user writes them, used in FieldError.
const (
	fieldDst    = "dst"
	fieldProto  = "proto"
	fieldPort   = "port"
	fieldAction = "action"
)

// dstFix is the tail of every dst message: what the user may write instead.
const dstFix = "(write example.com, .example.com for it and every subdomain, 10.1.2.3 or 10.0.0.0/8)"

// FieldError is one invalid field of one rule. Index is the rule's position
// in its list; a negative Index (a rule on its own) omits the "rules[i]: "
// prefix.
type FieldError struct {
	Index int
	Field string
	Value string
	Msg   string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Index >= 0 {
		b.WriteString("rules[")
		b.WriteString(strconv.Itoa(e.Index))
		b.WriteString("]: ")
	}
	b.WriteString(e.Field)
	b.WriteByte(' ')
	b.WriteString(strconv.Quote(e.Value))
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Canonical returns the rule in canonical form: lower-case, trailing dot
// trimmed, defaults filled in (proto https, the proto's port, action allow),
// CIDR masked and a /32 written as the plain address; path rules with
// normalised paths, upper-case sorted methods and action allow by default,
// in the order given, and path_default deny when there are path rules. The error joins one
// *FieldError (Index -1) per invalid field.
func (r Rule) Canonical() (Rule, error) {
	errs := r.canonicalInto(&r, -1)
	return r, errors.Join(errs...)
}

// canonicalInto rewrites *out (a copy of r) field by field and returns one
// *FieldError per bad field, so a caller can report them all at once.
func (r Rule) canonicalInto(out *Rule, index int) []error {
	var errs []error
	fail := func(field, value, msg string) {
		errs = append(errs, &FieldError{Index: index, Field: field, Value: value, Msg: msg})
	}

	dst, msg := canonicalDst(r.Dst)
	if msg != "" {
		fail(fieldDst, r.Dst, msg)
	}
	out.Dst = dst

	proto := Proto(strings.ToLower(string(r.Proto)))
	if proto == "" {
		proto = HTTPS
	}
	protoOK := proto.known()
	if !protoOK {
		fail(fieldProto, string(r.Proto), "unknown protocol (write https, http, tcp or ssh; https when omitted)")
	}
	out.Proto = proto

	port := r.Port
	switch {
	case port.IsZero():
		if protoOK {
			if d := proto.defaultPort(); d != 0 {
				port = PortRange{Lo: d, Hi: d}
			} else {
				fail(fieldPort, "", "proto "+string(proto)+" has no default port (write port: 5432 or port: 8000-8100)")
			}
		}
	case port.Lo == 0 || port.Hi == 0:
		fail(fieldPort, port.String(), "ports are 1-65535 (write 443 or 8000-8100, or omit port for the proto's default)")
	case port.Lo > port.Hi:
		fail(fieldPort, port.String(), fmt.Sprintf("the range is reversed (write %d-%d)", port.Hi, port.Lo))
	}
	out.Port = port

	action := Action(strings.ToLower(string(r.Action)))
	if action == "" {
		action = Allow
	}
	if action != Allow && action != Deny {
		fail(fieldAction, string(r.Action), "unknown action (write allow or deny; allow when omitted)")
	}
	out.Action = action

	canonicalPathRules(r, out, fail)
	canonicalProjects(r, out, fail)
	return errs
}

// Validate returns the canonical form of every rule, index-aligned with
// rules. The error joins a *FieldError for every bad field of every rule,
// not just the first; on error, the invalid rules' slots hold their
// best-effort (lower-cased, defaulted) forms.
func Validate(rules []Rule) ([]Rule, error) {
	out := make([]Rule, len(rules))
	var errs []error
	for i, r := range rules {
		out[i] = r
		errs = append(errs, r.canonicalInto(&out[i], i)...)
	}
	return out, errors.Join(errs...)
}

// Key is "dst:proto:port" of the canonical form, the rule's identity in the
// store ("example.com:https:443", ".example.com:http:8000-8100",
// "10.0.0.0/8:tcp:5432"), followed by "@" and the projects joined by ","
// for a rule scoped to projects ("example.com:https:443@api,web"): a project
// may have its own rule for a dst a global rule also names. The action is
// not part of it. For an invalid rule
// Key is built from the best-effort form and identifies nothing stored.
func (r Rule) Key() string {
	c, _ := r.Canonical()
	return c.key()
}

// key assumes r is canonical already.
func (r Rule) key() string {
	k := r.Dst + ":" + string(r.Proto) + ":" + r.Port.String()
	if len(r.Projects) > 0 {
		k += "@" + strings.Join(r.Projects, ",")
	}
	return k
}

// AppliesTo reports whether the rule applies to the agents of project: a
// global rule applies to every project ("" included), a scoped one to its
// projects only.
func (r Rule) AppliesTo(project string) bool {
	return len(r.Projects) == 0 || slices.Contains(r.Projects, project)
}

// IsWildcard reports whether the dst is a ".example.com" wildcard.
func (r Rule) IsWildcard() bool { return strings.HasPrefix(r.Dst, ".") }

// IsIP reports whether the dst is an IP address or CIDR.
func (r Rule) IsIP() bool {
	if strings.Contains(r.Dst, "/") {
		_, err := netip.ParsePrefix(r.Dst)
		return err == nil
	}
	_, err := netip.ParseAddr(r.Dst)
	return err == nil
}

// canonicalDst returns the canonical dst and "" or, for an invalid dst, a
// message naming the problem and the fix.
func canonicalDst(raw string) (string, string) {
	s := strings.TrimSuffix(strings.ToLower(raw), ".")
	if s == "" {
		return s, "empty " + dstFix
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return s, "not a valid CIDR (write 10.0.0.0/8, or 10.1.2.3 for one address)"
		}
		if !p.Addr().Is4() {
			return s, msgNoIPv6
		}
		p = p.Masked()
		if p.IsSingleIP() {
			return p.Addr().String(), ""
		}
		return p.String(), ""
	}
	if strings.Contains(s, ":") {
		if _, err := netip.ParseAddr(s); err == nil {
			return s, msgNoIPv6
		}
		return s, "not a domain, IP or CIDR: ':' separates fields, it cannot be in a name (write the port in the port field) " + dstFix
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.String(), ""
	}
	if strings.HasPrefix(s, "*.") {
		if _, msg := canonicalDst(s[1:]); msg != "" {
			return s, msg
		}
		return s, "write " + s[1:] + " instead: a leading dot matches " + s[2:] + " and every subdomain"
	}
	wildcard := strings.HasPrefix(s, ".")
	name := s
	if wildcard {
		name = s[1:]
	}
	labels, msg := checkName(name)
	if msg != "" {
		return s, msg
	}
	if labels < 2 {
		if wildcard {
			return s, "too broad: a wildcard needs at least two labels after the dot (write .example.com)"
		}
		return s, "a single-label name is refused: it resolves through the search domains, so it is not the name reached (write the fully qualified name, e.g. " + name + ".example.com)"
	}
	return s, ""
}

const msgNoIPv6 = "IPv6 destinations are not supported: agents have no IPv6 egress (write a name, an IPv4 address or an IPv4 CIDR)"

// checkName checks a lower-case name without leading or trailing dot and
// returns its label count, or a message saying what is wrong with it. It
// does not allocate on success: it runs on every Decide.
func checkName(name string) (int, string) {
	if len(name) > 253 {
		return 0, "longer than 253 characters, the limit of a DNS name"
	}
	labels := 0
	start := 0
	allDigits := true
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '.' {
			c := name[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c == '-', c == '_':
				allDigits = false
			default:
				return 0, "not a domain, IP or CIDR " + dstFix
			}
			continue
		}
		label := name[start:i]
		switch {
		case label == "":
			return 0, "empty label (two dots in a row, or a dot at the start) " + dstFix
		case len(label) > 63:
			return 0, "label " + strconv.Quote(label) + " is longer than 63 characters, the limit of a DNS label"
		case label[0] == '-' || label[len(label)-1] == '-':
			return 0, "label " + strconv.Quote(label) + " starts or ends with '-' " + dstFix
		}
		labels++
		if i == len(name) && allDigits {
			// No top-level domain is numeric: this is a malformed address.
			return 0, "not a valid IPv4 address (write 10.1.2.3 or 10.0.0.0/8)"
		}
		start = i + 1
		allDigits = true
	}
	return labels, ""
}

// validHost reports whether host (lower-case, no trailing dot) is a name a
// rule could match.
func validHost(host string) bool {
	n, msg := checkName(host)
	return msg == "" && n > 0
}
