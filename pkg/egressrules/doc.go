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
// # Store
//
// Store keeps the rules in dir/egress-rules.yaml and their identities in
// dir/egress-rule-ids.yaml, under a flock(2) on dir/.egress-rules.lock
// (shared for reads, exclusive for writes), written by temp file, fsync,
// rename and fsync of the directory.
package egressrules
