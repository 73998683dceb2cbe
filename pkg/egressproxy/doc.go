// Package egressproxy is clawker's transparent egress proxy: the catch-all
// listener (<net>.200:15001) that the kernel (cgroup BPF) redirects every agent
// TCP connection to when its destination is outside the agent network.
//
// The kernel rewrote the destination, so the proxy never knows where the agent
// meant to go. It decides on the NAME the agent itself announced instead:
//
//   - TLS: the SNI of the ClientHello, read without terminating TLS (no MITM,
//     the agent sees the real server certificate). The catch-all treats every
//     TLS connection as port 443: the proxy dials the allowed name at the port
//     the rule allowed, never the agent's port (which it cannot see anyway).
//     Other ports arrive later through dedicated per-port listeners fed by the
//     kernel's (identity, port) routes; they are not this listener's business.
//   - Plain HTTP/1.x: the Host (or absolute-form URI host) of EVERY request on
//     the connection, at the port named in the Host (default 80).
//   - Anything else is reset.
//
// Limits of deciding on names without terminating TLS: the proxy sees only
// the outer SNI. A ClientHello carrying ECH (real or GREASE) is decided on
// that outer name, so allowing a shared ECH public name (a CDN's) admits what
// hides behind it; the DNS sibling keeps SNI visible by answering HTTPS/SVCB
// without ech. Likewise domain fronting (an inner Host other than the SNI) is
// only detectable on legs that terminate and inspect. CONNECT is refused: the
// catch-all is transparent, agents never talk to it as a forward proxy.
//
// The inspection leg (inspect.go): when the deciding allow rule has path
// rules (Decision.Paths), the proxy does not splice. It terminates the
// agent's TLS with a leaf for the SNI minted from the firewall CA
// (SetInspectCA; leaves cached per name and renewed hours before they end,
// the cache dropped when the CA changes; no CA, no inspection: refused),
// offers h2 and http/1.1, and serves every request: a Host/:authority other
// than the SNI is 421 (domain fronting, visible only here); the path is
// normalised and decided with the method by the path rules under the policy
// current at that request; a refusal is 403 naming host, method, path and
// the command that allows it, and goes to OnDenied (Where "path"). An
// allowed request is forwarded with the normalised path (the upstream sees
// what was decided) by httputil.ReverseProxy over a new TLS leg that dials
// the same resolve-and-floor-checked IP and verifies the upstream's
// certificate for the name against UpstreamRoots (system roots plus
// firewall.upstream_ca); one that does not verify is 502 and one log line.
// Upgrades (WebSocket) pass through the reverse proxy. Plain HTTP to a name
// with path rules is decided per request the same way, without TLS. Each
// such request gets its own access-log line (kind "request").
//
// An allowed name is resolved through the DNS sibling, each IPv4 answer is
// checked against the policy's private/metadata floor (DNS rebinding), and
// exactly one checked IP is dialled — there is no second lookup between check
// and use. TLS bytes are then spliced between the two bare *net.TCPConn values
// so Linux moves them with splice(2); nothing may wrap those conns, since any
// wrapper silently turns splice off.
//
// Policies are swapped in place (SetPolicy): a new connection is decided by the
// policy current at its accept, and on every swap the live connections are
// re-decided; only those the new policy refuses are reset. Without a policy the
// proxy refuses everything (fail closed).
package egressproxy
