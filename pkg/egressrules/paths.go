package egressrules

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// PathRule is one path rule of an inspected rule: what the proxy does with
// the requests whose (normalised) path it matches.
type PathRule struct {
	// Path is a literal prefix starting with "/" ("/v1/"), or "~" and an
	// RE2 expression matched against the whole normalised path ("~/v[0-9]+/models").
	Path string `yaml:"path" json:"path"`
	// Action is allow (the default) or deny.
	Action Action `yaml:"action,omitempty" json:"action,omitempty"`
	// Methods limits the rule to these methods (upper case); empty is every method.
	Methods []string `yaml:"methods,omitempty" json:"methods,omitempty"`
}

// IsRegex reports whether the path rule is a "~" regular expression.
func (pr PathRule) IsRegex() bool { return strings.HasPrefix(pr.Path, "~") }

// Equal reports whether two path rules are the same (methods compared in order).
func (pr PathRule) Equal(o PathRule) bool {
	return pr.Path == o.Path && pr.Action == o.Action && slices.Equal(pr.Methods, o.Methods)
}

// Field names of path rules as the user writes them.
const (
	fieldPathRules   = "path_rules"
	fieldPathDefault = "path_default"
	fieldPath        = "path"
	fieldMethods     = "methods"
)

func pathRuleField(i int, sub string) string {
	return fieldPathRules + "[" + strconv.Itoa(i) + "]." + sub
}

// canonicalPathRules canonicalises r's path rules and path default into
// out; r is the rule with its proto and dst already canonical in out.
func canonicalPathRules(r Rule, out *Rule, fail func(field, value, msg string)) {
	if len(r.PathRules) == 0 {
		out.PathRules = nil
		switch pd := Action(strings.ToLower(string(r.PathDefault))); pd {
		case "":
			out.PathDefault = ""
		case Allow, Deny:
			out.PathDefault = pd
			fail(fieldPathDefault, string(r.PathDefault), "path_default without path_rules decides nothing (add a path rule, or drop path_default)")
		default:
			out.PathDefault = pd
			fail(fieldPathDefault, string(r.PathDefault), "unknown action (write allow or deny; deny when omitted)")
		}
		return
	}
	if (out.Proto != HTTPS && out.Proto != HTTP) || out.IsIP() {
		fail(pathRuleField(0, fieldPath), r.PathRules[0].Path,
			"path rules apply only to an https or http rule on a name, the connections the proxy can inspect (drop the path rules, or write the rule for a name with proto https or http)")
	}
	if out.Action == Deny {
		fail(pathRuleField(0, fieldPath), r.PathRules[0].Path,
			"the rule denies the connection before any request is made, so its path rules would never apply (make the rule action allow, or drop the path rules)")
	}
	out.PathRules = make([]PathRule, len(r.PathRules))
	firstAt := make(map[string]int, len(r.PathRules))
	for i, pr := range r.PathRules {
		c, errs := pr.canonical()
		for _, e := range errs {
			fail(pathRuleField(i, e.sub), e.value, e.msg)
		}
		if j, dup := firstAt[c.Path]; dup && len(errs) == 0 {
			fail(pathRuleField(i, fieldPath), pr.Path, fmt.Sprintf("also the path of path_rules[%d] (one path rule per path: give it both methods, or use another path)", j))
		} else if !dup {
			firstAt[c.Path] = i
		}
		out.PathRules[i] = c
	}
	pd := Action(strings.ToLower(string(r.PathDefault)))
	if pd == "" {
		pd = Deny
	}
	if pd != Allow && pd != Deny {
		fail(fieldPathDefault, string(r.PathDefault), "unknown action (write allow or deny; deny when omitted)")
	}
	out.PathDefault = pd
}

type pathRuleError struct{ sub, value, msg string }

// canonical returns the path rule with its path normalised, methods upper
// case, sorted and deduplicated, and action defaulted to allow.
func (pr PathRule) canonical() (PathRule, []pathRuleError) {
	var errs []pathRuleError
	c := PathRule{Path: pr.Path}
	switch {
	case pr.Path == "":
		errs = append(errs, pathRuleError{fieldPath, pr.Path, "empty (write a prefix such as /v1/, or ~ and a regular expression such as ~^/v[0-9]+/models$)"})
	case pr.IsRegex():
		if pr.Path == "~" {
			errs = append(errs, pathRuleError{fieldPath, pr.Path, "empty regular expression after ~ (write ~/v[0-9]+/models, or a prefix such as /v1/)"})
		} else if _, err := compilePathRegex(pr.Path[1:]); err != nil {
			errs = append(errs, pathRuleError{fieldPath, pr.Path, "not a valid RE2 expression: " + err.Error() + " (see https://github.com/google/re2/wiki/Syntax)"})
		}
	case !strings.HasPrefix(pr.Path, "/"):
		errs = append(errs, pathRuleError{fieldPath, pr.Path, "a path starts with / (write /" + pr.Path + ", or ~ and a regular expression)"})
	case strings.ContainsAny(pr.Path, "?#"):
		errs = append(errs, pathRuleError{fieldPath, pr.Path, "a path rule matches the path only, not a query or fragment (write the part before ? or #)"})
	default:
		p, err := NormalizePath(pr.Path)
		if err != nil {
			errs = append(errs, pathRuleError{fieldPath, pr.Path, err.Error()})
		} else {
			c.Path = p
		}
	}

	c.Action = Action(strings.ToLower(string(pr.Action)))
	if c.Action == "" {
		c.Action = Allow
	}
	if c.Action != Allow && c.Action != Deny {
		errs = append(errs, pathRuleError{fieldAction, string(pr.Action), "unknown action (write allow or deny; allow when omitted)"})
	}

	if len(pr.Methods) > 0 {
		c.Methods = make([]string, 0, len(pr.Methods))
		for _, m := range pr.Methods {
			u := strings.ToUpper(strings.TrimSpace(m))
			if !validMethod(u) {
				errs = append(errs, pathRuleError{fieldMethods, m, "not an HTTP method (write GET, POST, PUT, DELETE, ...; omit methods for every method)"})
				continue
			}
			c.Methods = append(c.Methods, u)
		}
		slices.Sort(c.Methods)
		c.Methods = slices.Compact(c.Methods)
		if len(c.Methods) == 0 {
			c.Methods = nil
		}
	}
	return c, errs
}

// validMethod accepts an upper-case HTTP token of letters, digits, '-' and '_'.
func validMethod(m string) bool {
	if m == "" || len(m) > 32 {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// compilePathRegex compiles a path expression anchored at both ends: it is
// matched against the whole normalised path.
func compilePathRegex(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, err
	}
	return regexp.Compile(`^(?:` + expr + `)$`)
}

// PathPolicy is the compiled path rules of one rule: immutable, safe for
// concurrent use, its regular expressions compiled once.
type PathPolicy struct {
	rules       []compiledPath
	defaultDeny bool
	dflReason   string
}

type compiledPath struct {
	rule    *PathRule
	prefix  string         // literal rules
	re      *regexp.Regexp // regex rules
	length  int            // the match's weight: prefix or expression length
	methods []string
	allow   bool
	verb    string // `path rule "/v1/" allows`
}

// CompilePaths compiles path rules and their default (deny when empty).
// The rules are canonicalised; the error joins one *FieldError (Index -1)
// per bad field.
func CompilePaths(rules []PathRule, pathDefault Action) (*PathPolicy, error) {
	r := Rule{Dst: "path.invalid", Proto: HTTPS, Action: Allow, PathRules: rules, PathDefault: pathDefault}
	c := r
	var errs []error
	canonicalPathRules(r, &c, func(field, value, msg string) {
		errs = append(errs, &FieldError{Index: -1, Field: field, Value: value, Msg: msg})
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return compilePaths(c.PathRules, c.PathDefault), nil
}

// compilePaths builds the policy of canonical path rules; nil when there
// are none. A rule whose expression does not compile is left out (the
// rule's validation reports it).
func compilePaths(rules []PathRule, pathDefault Action) *PathPolicy {
	if len(rules) == 0 {
		return nil
	}
	pp := &PathPolicy{defaultDeny: pathDefault != Allow}
	if pp.defaultDeny {
		pp.dflReason = "no path rule matches; path_default deny"
	} else {
		pp.dflReason = "no path rule matches; path_default allow"
	}
	owned := slices.Clone(rules)
	for i := range owned {
		pr := &owned[i]
		cp := compiledPath{rule: pr, methods: pr.Methods, allow: pr.Action != Deny}
		if pr.IsRegex() {
			re, err := compilePathRegex(pr.Path[1:])
			if err != nil {
				continue
			}
			cp.re, cp.length = re, len(pr.Path)-1
		} else {
			cp.prefix, cp.length = pr.Path, len(pr.Path)
		}
		verb := " allows"
		if !cp.allow {
			verb = " denies"
		}
		cp.verb = "path rule " + strconv.Quote(pr.Path) + verb
		pp.rules = append(pp.rules, cp)
	}
	return pp
}

// Len is the number of path rules compiled in.
func (pp *PathPolicy) Len() int {
	if pp == nil {
		return 0
	}
	return len(pp.rules)
}

// PathDecision is the verdict on one request of an inspected connection.
type PathDecision struct {
	Allow bool
	// Path is the normalised path that was matched (the raw path when it
	// was refused as malformed).
	Path string
	// Rule is the path rule that decided; nil when path_default decided or
	// the path was refused as malformed. It points into the policy: do not
	// modify it.
	Rule   *PathRule
	Reason string
}

// Decide judges one request by its method and raw path (as sent, before
// any decoding; a query is ignored) by the matching rules in the package
// comment. A path NormalizePath refuses is denied. A nil PathPolicy
// allows everything: the rule has no path rules.
func (pp *PathPolicy) Decide(method, rawPath string) PathDecision {
	p, err := NormalizePath(rawPath)
	if err != nil {
		return PathDecision{Path: rawPath, Reason: "malformed path refused: " + err.Error()}
	}
	if pp == nil {
		return PathDecision{Allow: true, Path: p, Reason: "no path rules"}
	}
	m := strings.ToUpper(method)
	var best *compiledPath
	for i := range pp.rules {
		cr := &pp.rules[i]
		if best != nil && cr.length <= best.length {
			continue // ties go to the earlier rule
		}
		if len(cr.methods) > 0 && !slices.Contains(cr.methods, m) {
			continue
		}
		if cr.re != nil {
			if !cr.re.MatchString(p) {
				continue
			}
		} else if !strings.HasPrefix(p, cr.prefix) {
			continue
		}
		best = cr
	}
	if best == nil {
		return PathDecision{Allow: !pp.defaultDeny, Path: p, Reason: pp.dflReason}
	}
	return PathDecision{Allow: best.allow, Path: p, Rule: best.rule, Reason: best.verb + " " + m}
}

// NormalizePath cleans a request path before matching, so that a path
// cannot name what a rule denies in a form the rule does not see:
//   - a query or fragment ("?..." / "#...") is dropped;
//   - escapes of unreserved characters and of "." and "/" (%2e, %2f) are
//     decoded, every other escape is kept with upper-case hex, and bytes
//     not allowed raw in a path (space, non-ASCII, `"<>\^{|}`...) are
//     escaped, so a rule and a request spell one path one way;
//   - "." and ".." segments are resolved (".." at the root stays at the
//     root) and repeated slashes collapsed; a trailing slash is kept.
//
// It refuses what it cannot make safe: an empty path or one not starting
// with "/", NUL or another control byte (raw or escaped: %00, %0A), an
// invalid escape, and a dot segment carrying parameters ("..;x", which
// some servers resolve as ".."). The result is idempotent.
func NormalizePath(raw string) (string, error) {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		raw = raw[:i]
	}
	if !strings.HasPrefix(raw, "/") {
		if raw == "" {
			return "", errors.New("empty path (a request path starts with /)")
		}
		return "", fmt.Errorf("path %q does not start with / (write /%s)", truncate(raw), truncate(raw))
	}
	// Decode and re-escape into one canonical spelling.
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '%' {
			if i+2 >= len(raw) || unhex(raw[i+1]) < 0 || unhex(raw[i+2]) < 0 {
				return "", fmt.Errorf("invalid escape at byte %d of %q (a %% is followed by two hex digits)", i, truncate(raw))
			}
			d := byte(unhex(raw[i+1])<<4 | unhex(raw[i+2]))
			i += 2
			switch {
			case d == 0 || d < 0x20 || d == 0x7f:
				return "", fmt.Errorf("control character %%%02X in path %q", d, truncate(raw))
			case unreserved(d) || d == '/':
				b.WriteByte(d)
			default:
				writeEscape(&b, d)
			}
			continue
		}
		switch {
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("control character 0x%02x in path %q", c, truncate(raw))
		case unreserved(c) || rawInPath(c):
			b.WriteByte(c)
		default:
			writeEscape(&b, c)
		}
	}
	decoded := b.String()

	// Resolve segments. segs holds the output segments; a trailing slash is
	// kept when the last input segment is empty, "." or "..".
	parts := strings.Split(decoded[1:], "/")
	segs := make([]string, 0, len(parts))
	trailing := false
	for i, s := range parts {
		last := i == len(parts)-1
		switch s {
		case "":
			trailing = last
		case ".":
			trailing = last
		case "..":
			if len(segs) > 0 {
				segs = segs[:len(segs)-1]
			}
			trailing = last
		default:
			if dotWithParams(s) {
				return "", fmt.Errorf("dot segment with parameters %q in path %q", s, truncate(raw))
			}
			segs = append(segs, s)
			trailing = false
		}
	}
	out := "/" + strings.Join(segs, "/")
	if trailing && len(segs) > 0 {
		out += "/"
	}
	return out, nil
}

// dotWithParams reports "." or ".." followed by ";params".
func dotWithParams(s string) bool {
	i := strings.IndexByte(s, ';')
	if i < 0 {
		return false
	}
	return s[:i] == "." || s[:i] == ".."
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

func writeEscape(b *strings.Builder, c byte) {
	const hex = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&15])
}

// unreserved is RFC 3986's unreserved set.
func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// rawInPath is what a path may hold unescaped besides unreserved
// characters: "/", the sub-delimiters, ":" and "@".
func rawInPath(c byte) bool {
	return strings.IndexByte("/!$&'()*+,;=:@", c) >= 0
}
