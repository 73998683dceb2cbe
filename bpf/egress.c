//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// clawker egress enforcement: cgroup sock_addr and sock_create programs.
//
// The programs are attached once at a cgroup that is an ancestor of every
// agent (the Docker parent cgroup in production, a child cgroup in tests) and
// tell agents apart by the cgroup id of the calling task. A task whose cgroup
// has no entry in cgroup_cfg passes untouched.
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

#define DNS_PORT 53

// Wake the reader only once this much is pending (per-event wakeups cost
// microseconds per connect; see FINDINGS). The Go reader also polls.
#define WAKEUP_BYTES (64 * 1024)

// cgroup_cfg.flags
#define CFG_DISABLED (1U << 0)         // explicit bypass without expiry
#define CFG_EVENTS (1U << 1)           // emit decision events
#define CFG_ENFORCE_LOOPBACK (1U << 2) // no loopback exemption (tests)

enum hook {
	HOOK_CONNECT4 = 1,
	HOOK_CONNECT6 = 2,
	HOOK_SENDMSG4 = 3,
	HOOK_SENDMSG6 = 4,
	HOOK_SOCK_CREATE = 5,
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
};

enum stat {
	STAT_RESERVE_FAIL = 0,
	STAT_RATELIMIT_DROP = 1,
	STAT_EVENTS = 2,
	STAT_ALLOW = 3,
	STAT_REDIRECT = 4,
	STAT_DENY = 5,
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

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void count_verdict(__u8 verdict)
{
	if (verdict >= V_DENY_UDP)
		count(STAT_DENY);
	else if (verdict >= V_REDIRECT_DNS)
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

static __always_inline void emit(const struct agent_cfg *cfg, __u64 cgid, __u64 now, struct event *ev)
{
	if (!(cfg->flags & CFG_EVENTS))
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
	__u64 ugid = bpf_get_current_uid_gid();
	ev->ts_ns = now;
	ev->cgroup_id = cgid;
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	ev->uid = (__u32)ugid;
	__builtin_memcpy(e, ev, sizeof(*e));

	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, pending >= WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	count(STAT_EVENTS);
}

static __always_inline void set_mapped(__u32 *dst, __be32 ip4)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = ip4;
}

// Returns the config of an enrolled cgroup, or NULL when the caller is not
// enrolled. *verdict is set when the cgroup is enrolled but not enforced now.
static __always_inline struct agent_cfg *enrolled(__u64 cgid, __u64 now, __u8 *verdict)
{
	struct agent_cfg *cfg = bpf_map_lookup_elem(&cgroup_cfg, &cgid);
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
	if (cfg->subnet_prefixlen && (dst & cfg->subnet_mask4) == cfg->subnet_ip4 && dst != cfg->gateway_ip4)
		return V_ALLOW_SUBNET;

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
	__u64 cgid = bpf_get_current_cgroup_id();
	__u64 now = bpf_ktime_get_boot_ns();
	__u8 verdict;
	struct agent_cfg *cfg = enrolled(cgid, now, &verdict);
	if (!cfg)
		return 1;

	__u8 proto = ctx->protocol;
	__be32 ip = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
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
	if (verdict >= V_DENY_UDP) {
		ret = 0;
	} else if (verdict >= V_REDIRECT_DNS) {
		if (verdict == V_REDIRECT_DNS && proto == IPPROTO_UDP)
			remember_dns(ctx, ctx->user_ip4, (__be16)ctx->user_port, ip, port);
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
	__u64 cgid = bpf_get_current_cgroup_id();
	__u64 now = bpf_ktime_get_boot_ns();
	__u8 verdict;
	struct agent_cfg *cfg = enrolled(cgid, now, &verdict);
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
	if (verdict >= V_DENY_UDP) {
		ret = 0;
	} else if (verdict >= V_REDIRECT_DNS) {
		// Only IPv4-mapped destinations are ever redirected.
		if (verdict == V_REDIRECT_DNS && proto == IPPROTO_UDP)
			remember_dns(ctx, a3, (__be16)ctx->user_port, ip, port);
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
	__u64 cgid = bpf_get_current_cgroup_id();
	__u64 now = bpf_ktime_get_boot_ns();
	__u8 verdict;
	struct agent_cfg *cfg = enrolled(cgid, now, &verdict);
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
