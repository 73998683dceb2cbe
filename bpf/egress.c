//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// clawker egress enforcement: cgroup sock_addr, sock_create and skb programs,
// and the socket iterators that cut what an agent opened while unfiltered.
//
// The programs are attached to each agent's own cgroup. A task is enforced
// by the config of its cgroup or, when that has none, of its nearest
// enrolled ancestor: a process that moved into a cgroup below its agent's
// (cgroup namespaces let a root agent create one) is enforced like the
// agent. A task with no enrolled ancestor passes untouched.
//
// Byte order: every address and port stored in a map is in network byte order,
// exactly as the kernel hands it to the program, so the hot path never swaps.
//
// Map schemas are part of the pinned state a restarted control plane adopts.
// A changed struct makes the loader migrate the map: it copies the entries
// member by member, by field name through BTF, before switching the links
// (pkg/egress/migrate.go). Removing a member is allowed only while every
// entry holds zero there; renaming one is a removal plus an addition. What
// cannot be translated is refused, and the old programs keep enforcing.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

#define DNS_PORT 53
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_CLOSE 7
#define TCP_LISTEN 10

// Deepest cgroup level searched for an enrolled ancestor (the kernel's own
// limit is much higher; agents sit at level 2, their children below).
#define MAX_CGROUP_LEVEL 32

// Wake the reader only once this much is pending (per-event wakeups cost
// microseconds per connect; see FINDINGS). The Go reader also polls.
#define WAKEUP_BYTES (64 * 1024)

// cgroup_cfg.flags
#define CFG_DISABLED (1U << 0)         // explicit bypass without expiry
#define CFG_EVENTS (1U << 1)           // emit decision events
#define CFG_ENFORCE_LOOPBACK (1U << 2) // no loopback exemption (tests)
#define CFG_A2A_PROJECT (1U << 3)      // agents of the same project reach each other
#define CFG_A2A_ALLOW (1U << 4)        // the whole subnet passes (the old behaviour)
#define CFG_EVENTS_DENIED (1U << 5)    // emit events of refusals only (CFG_EVENTS: of every decision)

enum hook {
	HOOK_CONNECT4 = 1,
	HOOK_CONNECT6 = 2,
	HOOK_SENDMSG4 = 3,
	HOOK_SENDMSG6 = 4,
	HOOK_SOCK_CREATE = 5,
	HOOK_BACKSTOP = 6,
};

enum verdict {
	V_ALLOW_LOOPBACK = 1,
	V_ALLOW_SUBNET = 2,
	V_ALLOW_BYPASS = 3,
	V_ALLOW_DISABLED = 4,
	V_ALLOW_TARGET = 5, // already addressed to the proxy or the DNS server
	V_ALLOW_SOCKET = 6,
	V_REDIRECT_DNS = 7,
	V_REDIRECT_ROUTE = 8,
	V_REDIRECT_PROXY = 9,
	V_DENY_UDP = 10,
	V_DENY_IPV6 = 11,
	V_DENY_SOCKET = 12,
	// Added later: numbers are stable, so the ranges are not contiguous
	// (see is_deny and is_redirect).
	V_ALLOW_CP = 13,        // the CP's agent or Hydra public port
	V_ALLOW_PEER = 14,      // an agent of the same project
	V_ALLOW_SELF = 15,      // the agent's own address
	V_DENY_SUBNET = 16,     // anything else on the agent network
	V_DENY_CP = 17,         // another port of the CP
	V_DENY_GATEWAY = 18,    // the host, as the network's gateway
	V_DENY_BROADCAST = 19,  // network, subnet broadcast, 255.255.255.255
	V_DENY_MULTICAST = 20,  // 224.0.0.0/4
	V_DENY_BACKSTOP = 21,   // a packet the sock_addr hooks never saw
	V_ALLOW_IPRULE = 22,    // an IP/CIDR rule allows it: passed unchanged, no proxy
	V_DENY_IPRULE = 23,     // an IP/CIDR deny rule
};

enum stat {
	STAT_RESERVE_FAIL = 0,
	STAT_RATELIMIT_DROP = 1,
	STAT_EVENTS = 2,
	STAT_ALLOW = 3,
	STAT_REDIRECT = 4,
	STAT_DENY = 5,
	STAT_BACKSTOP_DROP = 6, // must stay 0 in normal operation
	STAT_CUT = 7,           // sockets destroyed by the cut iterators
	STAT_MAX = 8,
};

struct agent_cfg {
	__be32 proxy_ip4;   // catch-all listener and the route listeners
	__be32 dns_ip4;
	__be32 subnet_ip4;  // the agent network, already masked
	__be32 subnet_mask4;
	__be32 gateway_ip4; // inside the subnet but not a peer: the host
	__be16 proxy_port;  // catch-all listener
	__be16 dns_port;
	__u32 flags;
	__u8 subnet_prefixlen; // 0: no subnet
	__u8 _pad[3];
	__u64 bypass_until_ns; // CLOCK_BOOTTIME; pass while now < this
	__u64 ev_interval_ns;  // events: one token per interval (0: unlimited)
	__u64 ev_burst_ns;     // events: bucket depth, interval * burst
	__u64 _reserved[2];    // must be zero
	__be32 cp_ip4;         // the control plane: only the two ports below
	__be16 cp_port_agent;  // control_plane.agent_port
	__be16 cp_port_hydra;  // control_plane.hydra_public_port
	__be32 self_ip4;       // the agent's own address on the network
	__u32 project_id;      // with CFG_A2A_PROJECT: peers in peer_project with this id pass
};

struct route_key {
	__u32 identity;
	__be16 port;
	__u8 proto; // IPPROTO_TCP or IPPROTO_UDP
	__u8 _pad;
};

struct route_val {
	__be16 port; // proxy listener port on cgroup_cfg.proxy_ip4
	__u16 _pad;
	__u32 _reserved;
};

struct event {
	__u64 ts_ns; // CLOCK_BOOTTIME
	__u64 cgroup_id;
	__u32 pid;
	__u32 uid;
	__u32 orig_addr[4]; // IPv4 as ::ffff:a.b.c.d
	__u32 new_addr[4];
	__be16 orig_port;
	__be16 new_port;
	__u8 family; // AF_INET or AF_INET6 (of the socket)
	__u8 proto;
	__u8 hook;
	__u8 verdict;
};

struct dns_orig {
	__be32 orig_ip4; // what the application addressed
	__be32 new_ip4;  // the DNS server it was sent to instead
	__be16 orig_port;
	__be16 new_port;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct agent_cfg);
} cgroup_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __u32);
} ip_identity SEC(".maps");

// One slot holding the active route table. A sync builds a complete new
// inner map and swaps it into slot 0 with one update: a lookup sees either
// the old or the new table, never a partial or empty one.
struct route_table {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route_key);
	__type(value, struct route_val);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct route_table);
} routes SEC(".maps");

// IP and CIDR rules (egressrules), decided here rather than by the proxy,
// which cannot see where a rewritten connection was going. One slot holds
// an LPM trie, swapped whole like the routes. Each entry holds every rule
// that applies to its addresses, longest prefix first (deny first at equal
// length): the rules of covering prefixes are pushed down into it, since
// the trie answers only the longest entry. Rules name TCP protocols only
// (tcp, ssh, http, https); UDP never matches.
#define IP_RULES_PER_ENTRY 8
#define IPR_ALLOW 1
#define IPR_DENY 2

struct ip_rule_key {
	__u32 prefixlen;
	__be32 addr;
};

struct ip_rule {
	__u32 id;      // the rule's id in the store
	__u16 port_lo; // host order, inclusive
	__u16 port_hi;
	__u8 action;    // IPR_ALLOW or IPR_DENY
	__u8 prefixlen; // the rule's own prefix (an entry may hold broader ones)
	__u8 _pad[2];
};

struct ip_rule_set {
	__u32 n;
	struct ip_rule r[IP_RULES_PER_ENTRY];
};

struct ip_rule_table {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ip_rule_key);
	__type(value, struct ip_rule_set);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ip_rule_table);
} ip_rules SEC(".maps");

// Every enforced agent's address and its project id (agent_to_agent:
// project). Maintained by the eBPF owner.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, __u32);
} peer_project SEC(".maps");

// What one run of the cut iterators looks for, and what it did. Not pinned:
// the loader serialises runs.
struct cut_target {
	__u64 cgroup_id; // the enrolled cgroup; sockets of cgroups below it too
	__u32 destroyed;
	__u32 seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cut_target);
} cut_target SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// Event rate limiter per cgroup: the theoretical arrival time of the next
// event (GCRA, the timestamp form of a token bucket).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} ratelimit SEC(".maps");

// Per UDP socket: the last DNS redirect, so recvmsg can make the reply look
// like it came from the address the application asked.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dns_orig);
} sk_dns SEC(".maps");

// bpf2go only emits Go types that the program references, and clang emits
// only a forward declaration for a struct reached through pointers alone.
const struct event unused_event __attribute__((unused));
const struct route_key unused_route_key __attribute__((unused));
const struct route_val unused_route_val __attribute__((unused));
const struct dns_orig unused_sk_dns __attribute__((unused));
const struct cut_target unused_cut_target __attribute__((unused));
const struct ip_rule_key unused_ip_rule_key __attribute__((unused));
const struct ip_rule_set unused_ip_rule_set __attribute__((unused));

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int is_deny(__u8 v)
{
	return (v >= V_DENY_UDP && v <= V_DENY_SOCKET) || (v >= V_DENY_SUBNET && v <= V_DENY_BACKSTOP) || v == V_DENY_IPRULE;
}

static __always_inline int is_redirect(__u8 v)
{
	return v >= V_REDIRECT_DNS && v <= V_REDIRECT_PROXY;
}

static __always_inline void count_verdict(__u8 verdict)
{
	if (is_deny(verdict))
		count(STAT_DENY);
	else if (is_redirect(verdict))
		count(STAT_REDIRECT);
	else
		count(STAT_ALLOW);
}

// Racy across CPUs by design (no lock in the hot path): concurrent events
// of one cgroup may each take the same token, so the limit is approximate
// by at most one event per CPU per interval.
static __always_inline int ratelimit_ok(const struct agent_cfg *cfg, __u64 cgid, __u64 now)
{
	__u64 interval = cfg->ev_interval_ns;
	if (interval == 0)
		return 1;

	__u64 *tat = bpf_map_lookup_elem(&ratelimit, &cgid);
	if (!tat) {
		__u64 next = now + interval;
		bpf_map_update_elem(&ratelimit, &cgid, &next, BPF_ANY);
		return 1;
	}
	__u64 t = *tat;
	if (t < now)
		t = now;
	t += interval;
	if (t - now > cfg->ev_burst_ns)
		return 0;
	*tat = t;
	return 1;
}

// task: the program runs in the caller's task context (not in the skb
// program, where "current" may be any task or none).
static __always_inline void emit_ev(const struct agent_cfg *cfg, __u64 cgid, __u64 now, struct event *ev, int task)
{
	if (!(cfg->flags & CFG_EVENTS) && !((cfg->flags & CFG_EVENTS_DENIED) && is_deny(ev->verdict)))
		return;
	if (!ratelimit_ok(cfg, cgid, now)) {
		count(STAT_RATELIMIT_DROP);
		return;
	}

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RESERVE_FAIL);
		return;
	}
	ev->ts_ns = now;
	ev->cgroup_id = cgid;
	if (task) {
		ev->pid = bpf_get_current_pid_tgid() >> 32;
		ev->uid = (__u32)bpf_get_current_uid_gid();
	}
	__builtin_memcpy(e, ev, sizeof(*e));

	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, pending >= WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	count(STAT_EVENTS);
}

static __always_inline void emit(const struct agent_cfg *cfg, __u64 cgid, __u64 now, struct event *ev)
{
	emit_ev(cfg, cgid, now, ev, 1);
}

static __always_inline void set_mapped(__u32 *dst, __be32 ip4)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = ip4;
}

// The config of the caller's cgroup or, failing that, of its enrolled
// ancestor; *cgid is set to the enrolled cgroup. The exact lookup comes
// first, so an agent's own tasks cost one lookup as before; only a task
// below an agent walks the levels, shallowest first (agents do not nest).
static __noinline struct agent_cfg *find_cfg_current(__u64 *cgid)
{
	__u64 id = bpf_get_current_cgroup_id();
	struct agent_cfg *cfg = bpf_map_lookup_elem(&cgroup_cfg, &id);
	if (cfg) {
		*cgid = id;
		return cfg;
	}
	for (int l = 1; l < MAX_CGROUP_LEVEL; l++) {
		__u64 anc = bpf_get_current_ancestor_cgroup_id(l);
		if (anc == 0 || anc == id)
			break; // reached the caller's own level
		cfg = bpf_map_lookup_elem(&cgroup_cfg, &anc);
		if (cfg) {
			*cgid = anc;
			return cfg;
		}
	}
	return 0;
}

// find_cfg_current for a packet, by its socket's cgroup: also right when
// the kernel sends for the socket from another context (timers, softirq).
static __noinline struct agent_cfg *find_cfg_skb(struct __sk_buff *skb, __u64 *cgid)
{
	__u64 id = bpf_skb_cgroup_id(skb);
	if (id == 0)
		return 0;
	struct agent_cfg *cfg = bpf_map_lookup_elem(&cgroup_cfg, &id);
	if (cfg) {
		*cgid = id;
		return cfg;
	}
	for (int l = 1; l < MAX_CGROUP_LEVEL; l++) {
		__u64 anc = bpf_skb_ancestor_cgroup_id(skb, l);
		if (anc == 0 || anc == id)
			break;
		cfg = bpf_map_lookup_elem(&cgroup_cfg, &anc);
		if (cfg) {
			*cgid = anc;
			return cfg;
		}
	}
	return 0;
}

// Returns the config the caller is enforced by, or NULL when the caller is
// not enrolled. *verdict is set when the cgroup is enrolled but not
// enforced now.
static __always_inline struct agent_cfg *enrolled(__u64 *cgid, __u64 now, __u8 *verdict)
{
	struct agent_cfg *cfg = find_cfg_current(cgid);
	if (!cfg)
		return 0;
	*verdict = 0;
	if (cfg->flags & CFG_DISABLED)
		*verdict = V_ALLOW_DISABLED;
	else if (now < cfg->bypass_until_ns)
		*verdict = V_ALLOW_BYPASS;
	return cfg;
}

static __always_inline int is_loopback4(__be32 ip)
{
	return (ip & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000) || ip == 0;
}

// The IP/CIDR rule deciding a TCP connect to dst:dport: IPR_ALLOW,
// IPR_DENY, or 0 when none applies. exact: only rules naming the address
// itself (a /32) count, as on the agent network, where a broad CIDR must
// not open other agents.
static __always_inline __u8 ip_rule_action(__u8 proto, __be32 dst, __be16 dport, int exact)
{
	if (proto != IPPROTO_TCP)
		return 0;
	__u32 zero = 0;
	void *table = bpf_map_lookup_elem(&ip_rules, &zero);
	if (!table)
		return 0;
	struct ip_rule_key key = {.prefixlen = 32, .addr = dst};
	struct ip_rule_set *set = bpf_map_lookup_elem(table, &key);
	if (!set)
		return 0;
	__u16 port = bpf_ntohs(dport);
	for (int i = 0; i < IP_RULES_PER_ENTRY; i++) {
		if (i >= set->n)
			break;
		struct ip_rule *r = &set->r[i];
		if (exact && r->prefixlen != 32)
			continue;
		if (port >= r->port_lo && port <= r->port_hi)
			return r->action;
	}
	return 0;
}

static __always_inline __u8 ip_rule_verdict(__u8 action)
{
	return action == IPR_ALLOW ? V_ALLOW_IPRULE : V_DENY_IPRULE;
}

// On the agent network only the stack, the CP's two ports, the agent
// itself and (by agent_to_agent) its peers pass; the rest is refused.
static __always_inline __u8 decide_subnet(const struct agent_cfg *cfg, __be32 dst)
{
	if (cfg->subnet_prefixlen < 31 && (dst == cfg->subnet_ip4 || dst == (cfg->subnet_ip4 | ~cfg->subnet_mask4)))
		return V_DENY_BROADCAST;
	if (dst == cfg->gateway_ip4)
		return V_DENY_GATEWAY;
	if (cfg->self_ip4 && dst == cfg->self_ip4)
		return V_ALLOW_SELF;
	if (cfg->flags & CFG_A2A_ALLOW)
		return V_ALLOW_SUBNET;
	if ((cfg->flags & CFG_A2A_PROJECT) && cfg->project_id) {
		__u32 *project = bpf_map_lookup_elem(&peer_project, &dst);
		if (project && *project == cfg->project_id)
			return V_ALLOW_PEER;
	}
	return V_DENY_SUBNET;
}

// The IPv4 decision for an enforced cgroup. Sets *ip/*port to the new
// destination when the verdict redirects.
static __always_inline __u8 decide4(const struct agent_cfg *cfg, __u8 proto, __be32 *ip, __be16 *port)
{
	__be32 dst = *ip;
	__be16 dport = *port;

	if (dst == cfg->dns_ip4 && dport == cfg->dns_port)
		return V_ALLOW_TARGET;
	if (dport == bpf_htons(DNS_PORT)) {
		*ip = cfg->dns_ip4;
		*port = cfg->dns_port;
		return V_REDIRECT_DNS;
	}
	if (dst == cfg->proxy_ip4)
		return V_ALLOW_TARGET;
	if (!(cfg->flags & CFG_ENFORCE_LOOPBACK) && is_loopback4(dst))
		return V_ALLOW_LOOPBACK;
	if (cfg->cp_ip4 && dst == cfg->cp_ip4) {
		if (dport && (dport == cfg->cp_port_agent || dport == cfg->cp_port_hydra))
			return V_ALLOW_CP;
		// A CP run on the host sits at the gateway: its other TCP ports
		// are the host's, decided by the proxy like any outside address.
		if (dst != cfg->gateway_ip4 || proto != IPPROTO_TCP)
			return V_DENY_CP;
	}
	if (dst == 0xffffffff)
		return V_DENY_BROADCAST;
	if ((dst & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000))
		return V_DENY_MULTICAST;
	// The gateway is the host: TCP to it goes to the proxy like any outside
	// address (so only a rule plus firewall.private_destinations reach it,
	// never a bare connect); anything else to it is refused below.
	if (cfg->subnet_prefixlen && (dst & cfg->subnet_mask4) == cfg->subnet_ip4 &&
	    !(dst == cfg->gateway_ip4 && proto == IPPROTO_TCP)) {
		// A container that is not an agent (a collector, say) is reached
		// only through a rule naming its address.
		__u8 a = ip_rule_action(proto, dst, dport, 1);
		if (a)
			return ip_rule_verdict(a);
		return decide_subnet(cfg, dst);
	}

	// IP-literal destinations, the gateway included: a rule allows them
	// straight through or refuses them; none applies, and TCP goes on to
	// the proxy, which refuses an address no rule allows.
	__u8 ipa = ip_rule_action(proto, dst, dport, 0);
	if (ipa)
		return ip_rule_verdict(ipa);

	__u32 *identity = bpf_map_lookup_elem(&ip_identity, &dst);
	if (identity) {
		__u32 zero = 0;
		void *table = bpf_map_lookup_elem(&routes, &zero);
		if (table) {
			struct route_key key = {
				.identity = *identity,
				.port = dport,
				.proto = proto,
			};
			struct route_val *route = bpf_map_lookup_elem(table, &key);
			if (route) {
				*ip = cfg->proxy_ip4;
				*port = route->port;
				return V_REDIRECT_ROUTE;
			}
		}
	}

	if (proto == IPPROTO_TCP) {
		*ip = cfg->proxy_ip4;
		*port = cfg->proxy_port;
		return V_REDIRECT_PROXY;
	}
	return V_DENY_UDP;
}

static __always_inline void remember_dns(struct bpf_sock_addr *ctx, __be32 orig_ip, __be16 orig_port,
					 __be32 new_ip, __be16 new_port)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return;
	struct dns_orig *st = bpf_sk_storage_get(&sk_dns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	st->orig_ip4 = orig_ip;
	st->orig_port = orig_port;
	st->new_ip4 = new_ip;
	st->new_port = new_port;
}

static __always_inline int handle4(struct bpf_sock_addr *ctx, __u8 hook)
{
	__u64 cgid = 0;
	__u64 now = bpf_ktime_get_boot_ns();
	__u8 verdict = 0;
	struct agent_cfg *cfg = enrolled(&cgid, now, &verdict);
	if (!cfg)
		return 1;

	__u8 proto = ctx->protocol;
	__be32 ip = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__be32 orig_ip = ip;
	__be16 orig_port = port;
	struct event ev = {
		.family = AF_INET,
		.proto = proto,
		.hook = hook,
		.orig_port = port,
	};
	set_mapped(ev.orig_addr, ip);

	if (!verdict)
		verdict = decide4(cfg, proto, &ip, &port);

	int ret = 1;
	if (is_deny(verdict)) {
		ret = 0;
	} else if (is_redirect(verdict)) {
		if (verdict == V_REDIRECT_DNS && proto == IPPROTO_UDP)
			remember_dns(ctx, orig_ip, orig_port, ip, port);
		// Keep clang from reusing a ctx+offset pointer for the stores:
		// the verifier wants every ctx access at a constant offset.
		barrier_var(ctx);
		ctx->user_ip4 = ip;
		ctx->user_port = port;
	}
	set_mapped(ev.new_addr, ret ? ip : 0);
	ev.new_port = ret ? port : 0;
	ev.verdict = verdict;
	count_verdict(verdict);
	emit(cfg, cgid, now, &ev);
	return ret;
}

static __always_inline int handle6(struct bpf_sock_addr *ctx, __u8 hook)
{
	__u64 cgid = 0;
	__u64 now = bpf_ktime_get_boot_ns();
	__u8 verdict = 0;
	struct agent_cfg *cfg = enrolled(&cgid, now, &verdict);
	if (!cfg)
		return 1;

	__u8 proto = ctx->protocol;
	__u32 a0 = ctx->user_ip6[0];
	__u32 a1 = ctx->user_ip6[1];
	__u32 a2 = ctx->user_ip6[2];
	__u32 a3 = ctx->user_ip6[3];
	__be16 port = (__be16)ctx->user_port;
	struct event ev = {
		.family = AF_INET6,
		.proto = proto,
		.hook = hook,
		.orig_port = port,
		.orig_addr = {a0, a1, a2, a3},
	};

	int mapped = a0 == 0 && a1 == 0 && a2 == bpf_htonl(0x0000ffff);
	__be32 ip = a3;

	if (!verdict) {
		if (mapped)
			verdict = decide4(cfg, proto, &ip, &port);
		else if (!(cfg->flags & CFG_ENFORCE_LOOPBACK) && a0 == 0 && a1 == 0 && a2 == 0 &&
			 a3 == bpf_htonl(1))
			verdict = V_ALLOW_LOOPBACK;
		else
			verdict = V_DENY_IPV6;
	}

	int ret = 1;
	if (is_deny(verdict)) {
		ret = 0;
	} else if (is_redirect(verdict)) {
		// Only IPv4-mapped destinations are ever redirected.
		if (verdict == V_REDIRECT_DNS && proto == IPPROTO_UDP)
			remember_dns(ctx, a3, (__be16)ctx->user_port, ip, port);
		barrier_var(ctx);
		ctx->user_ip6[3] = ip;
		ctx->user_port = port;
	}
	if (ret) {
		ev.new_addr[0] = a0;
		ev.new_addr[1] = a1;
		ev.new_addr[2] = a2;
		ev.new_addr[3] = mapped ? ip : a3;
		ev.new_port = port;
	}
	ev.verdict = verdict;
	count_verdict(verdict);
	emit(cfg, cgid, now, &ev);
	return ret;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return handle4(ctx, HOOK_CONNECT4);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return handle4(ctx, HOOK_SENDMSG4);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return handle6(ctx, HOOK_CONNECT6);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return handle6(ctx, HOOK_SENDMSG6);
}

// A reply from the DNS server we redirected to appears to come from the
// address the application sent its query to. Independent of enrollment: a
// reply to a query sent while enrolled is still rewritten afterwards.
SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct dns_orig *st = bpf_sk_storage_get(&sk_dns, sk, 0, 0);
	if (!st)
		return 1;
	if (ctx->user_ip4 == st->new_ip4 && (__be16)ctx->user_port == st->new_port) {
		ctx->user_ip4 = st->orig_ip4;
		ctx->user_port = st->orig_port;
	}
	return 1;
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct dns_orig *st = bpf_sk_storage_get(&sk_dns, sk, 0, 0);
	if (!st)
		return 1;
	if (ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0x0000ffff) &&
	    ctx->user_ip6[3] == st->new_ip4 && (__be16)ctx->user_port == st->new_port) {
		ctx->user_ip6[3] = st->orig_ip4;
		ctx->user_port = st->orig_port;
	}
	return 1;
}

// Only TCP stream and UDP datagram sockets: raw, ICMP, SCTP, MPTCP and the
// rest are denied to enrolled cgroups, since the sock_addr hooks do not see
// their traffic.
SEC("cgroup/sock_create")
int sock_create(struct bpf_sock *sk)
{
	__u64 cgid = 0;
	__u64 now = bpf_ktime_get_boot_ns();
	__u8 verdict = 0;
	struct agent_cfg *cfg = enrolled(&cgid, now, &verdict);
	if (!cfg)
		return 1;

	__u32 family = sk->family;
	__u32 type = sk->type;
	__u32 proto = sk->protocol;
	if (verdict)
		return 1; // bypassed or disabled: no event per socket
	if ((type == SOCK_STREAM && proto == IPPROTO_TCP) || (type == SOCK_DGRAM && proto == IPPROTO_UDP))
		return 1; // the common case: no event either
	verdict = V_DENY_SOCKET;

	struct event ev = {
		.family = family,
		.proto = proto,
		.hook = HOOK_SOCK_CREATE,
		.verdict = verdict,
	};
	count_verdict(verdict);
	emit(cfg, cgid, now, &ev);
	return 0;
}

static __always_inline int enforced_now(const struct agent_cfg *cfg, __u64 now)
{
	return !(cfg->flags & CFG_DISABLED) && now >= cfg->bypass_until_ns;
}

// The backstop: every packet an enforced agent's sockets send must go to a
// destination the sock_addr hooks would pass as it is (after their
// rewrites, every destination is one of those). Anything else never went
// through them: a socket made before enrollment or during a bypass, a
// protocol they do not see. Dropped, counted, reported.
SEC("cgroup_skb/egress")
int backstop(struct __sk_buff *skb)
{
	__u64 cgid = 0;
	struct agent_cfg *cfg = find_cfg_skb(skb, &cgid);
	if (!cfg)
		return 1;
	__u64 now = bpf_ktime_get_boot_ns();
	if (!enforced_now(cfg, now))
		return 1;

	struct event ev = {.hook = HOOK_BACKSTOP, .verdict = V_DENY_BACKSTOP};
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			goto drop;
		__u8 proto = h[9];
		__be32 dst;
		__builtin_memcpy(&dst, &h[16], 4);
		__u16 frag = ((__u16)(h[6] & 0x1f) << 8) | h[7];
		__be16 dport = 0;
		ev.family = AF_INET;
		ev.proto = proto;
		set_mapped(ev.orig_addr, dst);
		if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP) && frag == 0) {
			__be16 ports[2];
			if (bpf_skb_load_bytes(skb, (h[0] & 0xf) * 4, ports, sizeof(ports)))
				goto drop;
			dport = ports[1];
		} else if (frag && (dst == cfg->dns_ip4 || (cfg->cp_ip4 && dst == cfg->cp_ip4))) {
			// A later fragment has no ports; its first one was checked.
			return 1;
		}
		ev.orig_port = dport;
		__be32 ip = dst;
		__be16 port = dport;
		__u8 v = decide4(cfg, proto, &ip, &port);
		if (!is_deny(v) && !is_redirect(v))
			return 1;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u32 d[4];
		if (bpf_skb_load_bytes(skb, 24, d, sizeof(d)))
			goto drop;
		ev.family = AF_INET6;
		__builtin_memcpy(ev.orig_addr, d, sizeof(d));
		if (!(cfg->flags & CFG_ENFORCE_LOOPBACK) && d[0] == 0 && d[1] == 0 && d[2] == 0 && d[3] == bpf_htonl(1))
			return 1;
	}
drop:
	count(STAT_BACKSTOP_DROP);
	count(STAT_DENY);
	emit_ev(cfg, cgid, now, &ev, 0);
	return 0;
}

// Kernel types the cut iterators read, relocated by CO-RE against the
// running kernel's BTF (only the members used are declared).
struct in6_addr {
	union {
		__be32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__be32 skc_daddr;
	__be16 skc_dport;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup;

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys_state *parent;
} __attribute__((preserve_access_index));

struct cgroup {
	struct cgroup_subsys_state self;
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct bpf_iter_meta;
struct udp_sock;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

// Whether sk belongs to the target cgroup or one below it.
static __always_inline int in_target(struct sock *sk, __u64 target)
{
	struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	for (int i = 0; i < MAX_CGROUP_LEVEL && cg; i++) {
		if (BPF_CORE_READ(cg, kn, id) == target)
			return 1;
		struct cgroup_subsys_state *parent = BPF_CORE_READ(cg, self.parent);
		if (!parent)
			return 0;
		cg = BPF_CORE_READ(parent, cgroup);
	}
	return 0;
}

// Whether the enforced policy would refuse, or rewrite, the connected
// destination of sk: then it was connected while the agent was unfiltered.
static __always_inline int refused(const struct agent_cfg *cfg, struct sock *sk, __u8 proto)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__be16 dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	__be32 ip;
	if (family == AF_INET6) {
		__u32 a0 = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32[0]);
		__u32 a1 = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32[1]);
		__u32 a2 = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32[2]);
		__u32 a3 = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32[3]);
		if (!(a0 == 0 && a1 == 0 && a2 == bpf_htonl(0x0000ffff))) {
			if (a0 == 0 && a1 == 0 && a2 == 0 && a3 == 0)
				return 0; // not connected
			// Native IPv6 is refused but for ::1 with the loopback exemption.
			return (cfg->flags & CFG_ENFORCE_LOOPBACK) || !(a0 == 0 && a1 == 0 && a2 == 0 && a3 == bpf_htonl(1));
		}
		ip = a3;
	} else if (family == AF_INET) {
		ip = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		if (ip == 0)
			return 0;
	} else {
		return 0;
	}
	__be16 port = dport;
	__u8 v = decide4(cfg, proto, &ip, &port);
	return is_deny(v) || is_redirect(v);
}

static __always_inline int cut(struct sock *sk, struct sock_common *skc, __u8 proto)
{
	__u32 zero = 0;
	struct cut_target *t = bpf_map_lookup_elem(&cut_target, &zero);
	if (!t || !t->cgroup_id)
		return 0;
	__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state == TCP_LISTEN || state == TCP_CLOSE)
		return 0;
	if (!in_target(sk, t->cgroup_id))
		return 0;
	__sync_fetch_and_add(&t->seen, 1);
	__u64 cgid = t->cgroup_id;
	struct agent_cfg *cfg = bpf_map_lookup_elem(&cgroup_cfg, &cgid);
	if (!cfg || !enforced_now(cfg, bpf_ktime_get_boot_ns()))
		return 0;
	if (!refused(cfg, sk, proto))
		return 0;
	if (bpf_sock_destroy(skc) == 0) {
		__sync_fetch_and_add(&t->destroyed, 1);
		count(STAT_CUT);
	}
	return 0;
}

// The cut: run in the agent's network namespace (the iterators see only
// the namespace they were created in), they destroy every socket of the
// target cgroup connected to where the policy would not let it.
SEC("iter/tcp")
int cut_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; // time-wait and request sockets
	return cut((struct sock *)tp, skc, IPPROTO_TCP);
}

SEC("iter/udp")
int cut_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	if (!sk)
		return 0;
	return cut(sk, (struct sock_common *)sk, IPPROTO_UDP);
}
