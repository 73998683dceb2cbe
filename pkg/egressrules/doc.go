// Package egressrules is the egress rule model of the clawker firewall: the
// rules a user writes (`clawker firewall add/remove`), the on-disk store that
// keeps them with stable identities, and the compiled Policy that the DNS
// sibling and the egress proxy decide with.
//
// # Rules
//
// A Rule names a destination (dst), a protocol (https by default, http, tcp,
// ssh), a port or port range (the protocol's default when omitted: https 443,
// http 80, ssh 22; tcp has none and needs one) and an action (allow by
// default, or deny). A dst is one of:
//
//   - an exact name, "example.com": that name only;
//   - a wildcard, ".example.com": example.com itself and every subdomain at
//     any depth (a.example.com, a.b.example.com, ...);
//   - an IPv4 address "10.1.2.3" or CIDR "10.0.0.0/8": IP-literal hosts only.
//
// Single-label names ("localhost", "intranet") are refused: they resolve
// through the resolver's search domains, so the name in the rule is not the
// name that is reached. A wildcard needs two labels after its dot (".com"
// would open a whole top-level domain). IPv6 destinations are refused: agents
// have no IPv6 egress. Canonical forms are lower-case, without a trailing dot,
// with every default filled in, CIDRs masked and a /32 written as the plain
// address; Rule.Key is "dst:proto:port" of that form, the rule's identity.
//
// # Precedence
//
// A rule applies to a connection (host, proto, port) when its dst matches the
// host, its proto equals proto and its port range contains port. Among the
// applicable rules the most specific dst wins:
//
//  1. for names, an exact name beats every wildcard, and a wildcard with more
//     labels beats one with fewer (.a.example.com beats .example.com);
//  2. for IPv4 hosts, the IP/CIDR rule with the longest prefix wins (an
//     address is a /32);
//  3. name rules never match IP hosts and IP rules never match names;
//  4. at equal specificity, deny beats allow;
//  5. no applicable rule: denied ("no rule allows <host> on <proto>/<port>").
//
// Applicability is checked before specificity: an exact rule for another
// port does not shadow a wildcard that covers the port asked for.
//
// One more floor sits under the rules for IP-literal hosts: an address in a
// restricted range (see Restricted: loopback, RFC 1918, link-local and cloud
// metadata, ...) is only allowed by a rule that itself lies inside that
// range (a user who writes 10.0.0.0/8 means it), or when a private
// destination holds it; a broad rule such as 0.0.0.0/0 does not open it.
// For names the same floor is applied to DNS answers (Policy.AnswerAllowed).
//
// IP and CIDR rules are enforced by the eBPF programs (Policy.KernelIPEntries
// compiles them, floor included, into the entries of a longest-prefix
// trie); the kernel knows the port but not the protocol above TCP.
//
// # Rules scoped to projects
//
// A rule with projects applies to the agents of those projects only; one
// without is global. Its Key carries the scope ("example.com:https:443@api"),
// so a project may have its own rule for a dst a global rule names too, and
// the store adds, merges and removes it apart from the global one. An
// agent's view, Policy.For(its project), is the global rules plus its
// project's, decided by the precedence above as one set: the most specific
// applicable dst wins whichever scope it is in, and at equal specificity
// deny wins (a project cannot open what a global deny closes, nor a global
// allow what a project deny closes). The control plane tells the siblings
// each agent's address and project (Doc.Agents, from Docker: the address
// Docker assigned and the dev.clawker.project label clawker run set, so an
// agent cannot claim another project); a client the doc does not name gets
// the global view. IP/CIDR rules cannot be scoped yet: the kernel decides
// them and does not know the agent's project. Rules served by a dedicated
// proxy listener (tcp, ssh, https off 443) can: their listeners and kernel
// routes are assigned over every scope (Routes), and the listener decides
// each connection by its client's project.
//
// # Path rules (inspected names)
//
// An allow rule for https or http on a name (exact or wildcard) may carry
// path_rules; its connections are then inspected by the proxy and every
// request is decided by the rule's PathPolicy (Decision.Paths). Names
// without path rules stay passthrough. Each path rule has a path, an
// action (allow by default) and optional methods (upper case; none means
// every method). A path is either
//
//   - a literal prefix starting with "/": "/v1/" matches /v1/ and what is
//     under it; "/v1" also matches /v1beta (a plain string prefix);
//   - "~" and an RE2 expression matched against the whole normalised path
//     (implicitly anchored: "~/v[0-9]+/models" does not match /v1/models/x).
//
// A request's path is normalised first (NormalizePath: escapes of
// unreserved characters, "." and "/" decoded, dot segments resolved,
// repeated slashes collapsed, query dropped), so /v1/../admin, //admin,
// /%2e%2e/admin and /v1/..%2fadmin are judged as /admin; what cannot be made
// safe (NUL and other control bytes, bad escapes, "..;") is refused. A
// literal rule's path is normalised the same way when the rule is stored.
//
// Matching: the rules whose methods admit the request's method (compared
// upper-cased) and whose path matches are applicable; among them the one
// with the longest path wins, a literal's length being its prefix's and a
// regex's the length of its expression (without the "~"); equal lengths go
// to the rule given first, and the store keeps the order given (a new path
// is appended, a path given again is replaced in place). When no path rule
// applies, path_default decides: deny unless it says allow. When several
// allow rules of one dst apply to a connection (overlapping port ranges),
// one with path rules decides, so a broader plain rule does not switch
// inspection off.
//
// # Store
//
// Store keeps the rules in dir/egress-rules.yaml and their identities in
// dir/egress-rule-ids.yaml, under a flock(2) on dir/.egress-rules.lock
// (shared for reads, exclusive for writes), written by temp file, fsync,
// rename and fsync of the directory.
package egressrules
