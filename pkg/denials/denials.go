// Package denials keeps the recent egress refusals the firewall siblings
// report (a name the DNS sibling answered NXDOMAIN for, a connection the
// proxy refused) in a bounded window in memory, and groups them for
// `clawker firewall denied`: what was refused, how often, by which agents,
// where, and the `clawker firewall add` line that would allow it. Nothing
// is written to disk.
package denials

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// WhereKernel is Record.Where for a refusal of the eBPF programs: the
// name is the address and port asked for, the reason the verdict.
const WhereKernel = "kernel"

// WherePath is Record.Where for a request the egress proxy refused by an
// inspected name's path rules: Method and Path name it.
const WherePath = "path"

// Record is one refusal.
type Record struct {
	Time time.Time
	Src  netip.Addr // the agent's address
	// CgroupID names the agent of a kernel refusal instead of Src (the
	// eBPF event knows its cgroup); whoever reads the window maps it.
	CgroupID uint64
	Where    string // "dns", "proxy" or WhereKernel
	Name     string // the name asked for (SNI, Host, query name)
	Proto    string // https, http, other; empty for DNS
	Reason   string
	// Method and Path name a refused request (Where == WherePath); Allow
	// is the command the proxy named in its 403, when it named one.
	Method, Path, Allow string
}

// Window is a bounded ring of records; the oldest go first. Safe for
// concurrent use.
type Window struct {
	mu      sync.Mutex
	recs    []Record
	next    int
	full    bool
	dropped uint64 // overwritten before anyone asked
}

// DefaultSize is how many refusals a Window keeps.
const DefaultSize = 8192

// New returns a window of size records (DefaultSize when size < 1).
func New(size int) *Window {
	if size < 1 {
		size = DefaultSize
	}
	return &Window{recs: make([]Record, size)}
}

// Add records rs.
func (w *Window) Add(rs ...Record) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range rs {
		if w.full {
			w.dropped++
		}
		w.recs[w.next] = r
		w.next = (w.next + 1) % len(w.recs)
		if w.next == 0 {
			w.full = true
		}
	}
}

// Since returns the records at or after t, oldest first.
func (w *Window) Since(t time.Time) []Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, start := w.next, 0
	if w.full {
		n, start = len(w.recs), w.next
	}
	// Sized for all: the records come from several reporters, so their
	// times are not in order and every one is looked at.
	out := make([]Record, 0, n)
	for i := range n {
		if r := &w.recs[(start+i)%len(w.recs)]; !r.Time.Before(t) {
			out = append(out, *r)
		}
	}
	return out
}

// Group is the summary of one refused destination.
type Group struct {
	Where  string    `json:"where"`
	Name   string    `json:"name"`
	Proto  string    `json:"proto,omitempty"`
	Method string    `json:"method,omitempty"` // a path refusal's request
	Path   string    `json:"path,omitempty"`
	Count  int       `json:"count"`
	Agents []string  `json:"agents"`
	First  time.Time `json:"first"`
	Last   time.Time `json:"last"`
	Reason string    `json:"reason"` // the latest
	Allow  string    `json:"allow"`  // the command that would allow it
}

// Summarize groups records by where, name and proto, naming each agent by
// agentOf (its address when agentOf has no name for it), most recent
// group first.
func Summarize(rs []Record, agentOf func(netip.Addr) string) []Group {
	type key struct{ where, name, proto, method, path string }
	groups := map[key]*Group{}
	agents := map[key]map[string]bool{}
	names := map[netip.Addr]string{} // agentOf's answers: a window holds few agents
	for _, r := range rs {
		k := key{r.Where, r.Name, r.Proto, r.Method, r.Path}
		g := groups[k]
		if g == nil {
			g = &Group{Where: r.Where, Name: r.Name, Proto: r.Proto, Method: r.Method, Path: r.Path, First: r.Time}
			groups[k] = g
			agents[k] = map[string]bool{}
		}
		g.Count++
		if r.Time.After(g.Last) {
			g.Last, g.Reason = r.Time, r.Reason
			if r.Allow != "" {
				g.Allow = r.Allow
			}
		}
		if r.Time.Before(g.First) {
			g.First = r.Time
		}
		name, ok := names[r.Src]
		if !ok {
			if name = agentOf(r.Src); name == "" {
				name = r.Src.String()
			}
			names[r.Src] = name
		}
		agents[k][name] = true
	}
	out := make([]Group, 0, len(groups))
	for k, g := range groups {
		for a := range agents[k] {
			g.Agents = append(g.Agents, a)
		}
		sort.Strings(g.Agents)
		switch {
		case g.Where == WhereKernel:
			g.Allow = KernelAllow(g.Name, g.Proto, g.Reason)
		case g.Where == WherePath:
			if g.Allow == "" {
				g.Allow = PathAllowCommand(g.Name, g.Proto, 0, g.Method, g.Path, "")
			}
		default:
			g.Allow = AllowCommand(g.Name, g.Proto, g.Reason)
		}
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Last.Equal(out[j].Last) {
			return out[i].Last.After(out[j].Last)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// KernelAllow says how a refusal of the eBPF programs could be allowed:
// dst is the "ip:port" asked for, verdict the program's (egress.Verdict's
// name). Most are refused by design, and it says so.
func KernelAllow(dst, proto, verdict string) string {
	ipRule := "an IP rule for " + dst
	if ap, err := netip.ParseAddrPort(dst); err == nil {
		ipRule = fmt.Sprintf("clawker firewall add %s --proto tcp --port %d", ap.Addr(), ap.Port())
	}
	switch verdict {
	case "deny-udp":
		return "none: agents send UDP only to DNS (port 53); use TCP"
	case "deny-subnet":
		if proto == "tcp" {
			return "another agent: firewall.agent_to_agent: project (same project) or allow; another container: " + ipRule
		}
		return "another agent: firewall.agent_to_agent: project (same project) or allow"
	case "deny-ip-rule":
		return "an IP deny rule refuses it: `clawker firewall list` names it, `clawker firewall remove` drops it"
	case "deny-cp":
		return "none: agents reach only the control plane's agent and Hydra public ports"
	case "deny-ipv6":
		return "none: agents have no IPv6 egress"
	case "deny-socket":
		if proto == "tcp" {
			// The event's one-byte protocol holds IPPROTO_MPTCP (262) as
			// 6: a stream socket asking for MPTCP, which Go's listeners
			// and dialers try first and then fall back to plain TCP.
			return "none: raw, packet and MPTCP sockets are refused (a client asking for MPTCP falls back to TCP)"
		}
		return "none: raw and packet sockets are refused"
	case "deny-gateway":
		return "none for this protocol: TCP to the host goes through the proxy (a rule plus firewall.private_destinations)"
	}
	return "none: refused by design (" + verdict + ")"
}

// NamePeers rewrites the suggestion of each refusal on the agent network
// (deny-subnet) whose destination is an enforced agent, which peerOf names
// "project/agent" ("" for any other address): the refused agent reaches it
// only by firewall.agent_to_agent, so the line names that agent and the
// setting, and no IP rule (an agent's address goes with its container).
func NamePeers(gs []Group, peerOf func(netip.Addr) string) {
	for i := range gs {
		g := &gs[i]
		if g.Where != WhereKernel || g.Reason != "deny-subnet" {
			continue
		}
		ap, err := netip.ParseAddrPort(g.Name)
		if err != nil {
			continue
		}
		if peer := peerOf(ap.Addr()); peer != "" {
			g.Allow = PeerAllow(peer, g.Agents)
		}
	}
}

// PeerAllow says how the agents from (each "project/agent") could reach
// the agent peer: firewall.agent_to_agent project when all of them are in
// peer's project, allow otherwise.
func PeerAllow(peer string, from []string) string {
	project, _, _ := strings.Cut(peer, "/")
	for _, f := range from {
		if p, _, ok := strings.Cut(f, "/"); !ok || p != project {
			return "agent " + peer + " is in another project: firewall.agent_to_agent: allow"
		}
	}
	return "agent " + peer + ": firewall.agent_to_agent: project (same project) or allow"
}

// denyRule finds the rule key a refusal by a deny rule names.
var denyRule = regexp.MustCompile(`denied by (\S+):(https|http|tcp|ssh):(\d+(?:-\d+)?)`)

// portInReason finds the port a proxy refusal names ("... on http/8080").
var portInReason = regexp.MustCompile(`on (https|http)/(\d+)`)

// AllowCommand is the `clawker firewall add` line that would let name
// through: DNS and TLS refusals need an https rule (the default), plain
// HTTP one with --proto http and, off port 80, --port. A refusal by a deny
// rule is allowed only by removing that rule: say so.
func AllowCommand(name, proto, reason string) string {
	if m := denyRule.FindStringSubmatch(reason); m != nil {
		// A deny rule refuses it: adding an allow would not win a tie.
		return fmt.Sprintf("clawker firewall remove %s --proto %s --port %s", m[1], m[2], m[3])
	}
	cmd := "clawker firewall add " + name
	if proto == "http" {
		cmd += " --proto http"
		if m := portInReason.FindStringSubmatch(reason); m != nil && m[2] != "80" {
			if p, err := strconv.Atoi(m[2]); err == nil {
				cmd += fmt.Sprintf(" --port %d", p)
			}
		}
	}
	return cmd
}

// PathAllowCommand is the command that would let method path through on an
// inspected name (port 0: the protocol's default): a path rule allowing
// exactly that path (a prefix) for that method, or, when a deny path rule
// (denyRule, its path) refused it, removing that rule.
func PathAllowCommand(host, proto string, port int, method, path, denyRule string) string {
	target := host + protoFlag(proto)
	if port != 0 && !(proto == "http" && port == 80) && !(proto != "http" && port == 443) {
		target += fmt.Sprintf(" --port %d", port)
	}
	if denyRule != "" {
		return fmt.Sprintf("clawker firewall remove %s --path %s", target, shellWord(denyRule))
	}
	cmd := fmt.Sprintf("clawker firewall add %s --path %s --action allow", target, shellWord(path))
	if method != "" {
		cmd += " --methods " + method
	}
	return cmd
}

func protoFlag(proto string) string {
	if proto == "http" {
		return " --proto http"
	}
	return ""
}

// shellWord quotes s for a POSIX shell when it holds anything but the
// characters a path is usually made of.
func shellWord(s string) string {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._-~%+:@,=", c)) {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}
