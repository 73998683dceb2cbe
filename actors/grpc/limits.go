package grpc

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	agentv1 "github.com/clawker/clawker-cp/proto/agent/v1"
)

// Limits bound what one client can make a gRPC server hold: every agent
// reaches the agent port, so none may exhaust the CP's connections,
// streams, memory or registry by itself. The zero value of a field means
// its default (AgentLimits, AdminLimits).
type Limits struct {
	// MaxConns is the listener's open connections; one more is closed as
	// soon as it is accepted.
	MaxConns int
	// MaxConnsPerPeer is the open connections from one IP address.
	MaxConnsPerPeer int
	// MaxStreams is the concurrent streams (RPCs) on one connection.
	MaxStreams uint32
	// MaxRecvMsgSize is the largest request message, in bytes; a larger
	// one fails with ResourceExhausted before it is decoded.
	MaxRecvMsgSize int
	// HandshakeTimeout bounds a new connection's TLS and HTTP/2 handshake.
	HandshakeTimeout time.Duration
	// PingMinTime: a client pinging more often is disconnected
	// (keepalive.EnforcementPolicy).
	PingMinTime time.Duration
	// PingIdle and PingTimeout: the server pings a connection quiet for
	// PingIdle and closes it when the ping is not answered within
	// PingTimeout, so a vanished peer stops holding a connection slot.
	PingIdle, PingTimeout time.Duration
	// MaxConnIdle closes a connection that has had no RPC for this long.
	MaxConnIdle time.Duration
	// RegisterRate and RegisterBurst limit Register calls per peer IP
	// (agent server only): RegisterBurst at once, then RegisterRate per
	// second. RegisterPeers bounds how many peers are tracked.
	RegisterRate  rate.Limit
	RegisterBurst int
	RegisterPeers int
	// LimitLoopback applies the per-peer caps (MaxConnsPerPeer, the
	// Register rate) to loopback peers too. Off, a loopback peer is exempt:
	// it is the host (a CP run as a host process, where every clawkerd of a
	// test connects from 127.0.0.1) or the CP's own container, never an
	// agent, whose address is its own on clawker-net. Tests turn it on.
	LimitLoopback bool
}

// AgentLimits are the agent server's defaults. A clawkerd holds one
// connection with one Session stream and registers again only after a CP
// restart; its biggest message is a 32 KiB output chunk.
var AgentLimits = Limits{
	MaxConns: 4096, MaxConnsPerPeer: 8, MaxStreams: 16, MaxRecvMsgSize: 256 << 10,
	HandshakeTimeout: 10 * time.Second, PingMinTime: 30 * time.Second,
	PingIdle: time.Minute, PingTimeout: 20 * time.Second, MaxConnIdle: 10 * time.Minute,
	RegisterRate: 1, RegisterBurst: 5, RegisterPeers: 4096,
}

// AdminLimits are the admin server's defaults. Every CLI connection comes
// from one address (the host, through Docker's port forward), so the
// per-peer cap is the whole cap; its messages carry rule lists.
var AdminLimits = Limits{
	MaxConns: 256, MaxConnsPerPeer: 256, MaxStreams: 64, MaxRecvMsgSize: 4 << 20,
	HandshakeTimeout: 10 * time.Second, PingMinTime: 30 * time.Second,
	PingIdle: time.Minute, PingTimeout: 20 * time.Second, MaxConnIdle: 10 * time.Minute,
}

// withDefaults fills every zero field from def.
func (l Limits) withDefaults(def Limits) Limits {
	pick := func(v, d int) int {
		if v <= 0 {
			return d
		}
		return v
	}
	pickD := func(v, d time.Duration) time.Duration {
		if v <= 0 {
			return d
		}
		return v
	}
	l.MaxConns = pick(l.MaxConns, def.MaxConns)
	l.MaxConnsPerPeer = pick(l.MaxConnsPerPeer, def.MaxConnsPerPeer)
	if l.MaxStreams == 0 {
		l.MaxStreams = def.MaxStreams
	}
	l.MaxRecvMsgSize = pick(l.MaxRecvMsgSize, def.MaxRecvMsgSize)
	l.HandshakeTimeout = pickD(l.HandshakeTimeout, def.HandshakeTimeout)
	l.PingMinTime = pickD(l.PingMinTime, def.PingMinTime)
	l.PingIdle = pickD(l.PingIdle, def.PingIdle)
	l.PingTimeout = pickD(l.PingTimeout, def.PingTimeout)
	l.MaxConnIdle = pickD(l.MaxConnIdle, def.MaxConnIdle)
	if l.RegisterRate <= 0 {
		l.RegisterRate = def.RegisterRate
	}
	l.RegisterBurst = pick(l.RegisterBurst, def.RegisterBurst)
	l.RegisterPeers = pick(l.RegisterPeers, def.RegisterPeers)
	return l
}

// serverOptions are the limits as gRPC server options.
func (l Limits) serverOptions() []ggrpc.ServerOption {
	return []ggrpc.ServerOption{
		ggrpc.MaxConcurrentStreams(l.MaxStreams),
		ggrpc.MaxRecvMsgSize(l.MaxRecvMsgSize),
		ggrpc.ConnectionTimeout(l.HandshakeTimeout),
		ggrpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.PingMinTime}),
		ggrpc.KeepaliveParams(keepalive.ServerParameters{Time: l.PingIdle, Timeout: l.PingTimeout, MaxConnectionIdle: l.MaxConnIdle}),
	}
}

// limitListener closes, on accept, a connection past the listener's cap
// or its peer's. Closing instead of not accepting (netutil.LimitListener)
// keeps one peer's flood from stalling everyone else's connections in the
// kernel's backlog.
type limitListener struct {
	net.Listener
	max, perPeer  int
	limitLoopback bool
	log           *zap.Logger
	server        string

	mu     sync.Mutex
	open   int
	byPeer map[netip.Addr]int
	warned map[netip.Addr]time.Time // last refusal logged, per peer
}

func newLimitListener(ln net.Listener, l Limits, server string, log *zap.Logger) *limitListener {
	return &limitListener{Listener: ln, max: l.MaxConns, perPeer: l.MaxConnsPerPeer, limitLoopback: l.LimitLoopback, log: log, server: server,
		byPeer: map[netip.Addr]int{}, warned: map[netip.Addr]time.Time{}}
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := peerIP(c.RemoteAddr())
		ll.mu.Lock()
		over := ""
		switch {
		case ll.open >= ll.max:
			over = fmt.Sprintf("the listener's %d", ll.max)
		case ll.byPeer[ip] >= ll.perPeer && (ll.limitLoopback || !ip.IsLoopback()):
			over = fmt.Sprintf("%d from one address", ll.perPeer)
		}
		if over == "" {
			ll.open++
			ll.byPeer[ip]++
			ll.mu.Unlock()
			return &limitedConn{Conn: c, release: func() { ll.release(ip) }}, nil
		}
		logIt := time.Since(ll.warned[ip]) > time.Minute
		if logIt {
			if len(ll.warned) > 4096 {
				clear(ll.warned)
			}
			ll.warned[ip] = time.Now()
		}
		ll.mu.Unlock()
		_ = c.Close()
		if logIt {
			ll.log.Warn("gRPC connection refused: too many open connections", zap.String("event", "grpc_conn_limited"),
				zap.String("server", ll.server), zap.String("peer", ip.String()), zap.String("limit", over))
		}
	}
}

func (ll *limitListener) release(ip netip.Addr) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	ll.open--
	if ll.byPeer[ip]--; ll.byPeer[ip] <= 0 {
		delete(ll.byPeer, ip)
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// peerIP is addr's IP address (unmapped), the zero Addr when it has none.
func peerIP(addr net.Addr) netip.Addr {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(tcp.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// registerLimiter is a token bucket per peer IP for Register. The map is
// bounded: past maxPeers, peers whose bucket is full again (as good as
// forgotten) are dropped, then those with the most tokens left.
type registerLimiter struct {
	every         rate.Limit
	burst         int
	maxPeers      int
	limitLoopback bool
	now           func() time.Time
	log           *zap.Logger

	mu    sync.Mutex
	peers map[netip.Addr]*peerBucket
}

type peerBucket struct {
	lim    *rate.Limiter
	seen   time.Time
	warned time.Time
}

func newRegisterLimiter(l Limits, log *zap.Logger) *registerLimiter {
	return &registerLimiter{every: l.RegisterRate, burst: l.RegisterBurst, maxPeers: l.RegisterPeers, limitLoopback: l.LimitLoopback,
		now: time.Now, log: log,
		peers: map[netip.Addr]*peerBucket{}}
}

// allow takes a token for ip; when there is none it returns how long
// until there is.
func (r *registerLimiter) allow(ip netip.Addr) (ok bool, wait time.Duration, logIt bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	b := r.peers[ip]
	if b == nil {
		if len(r.peers) >= r.maxPeers {
			r.evict(now)
		}
		b = &peerBucket{lim: rate.NewLimiter(r.every, r.burst)}
		r.peers[ip] = b
	}
	b.seen = now
	res := b.lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		logIt = now.Sub(b.warned) > time.Minute
		if logIt {
			b.warned = now
		}
		return false, d, logIt
	}
	return true, 0, false
}

// evict makes room for one peer.
func (r *registerLimiter) evict(now time.Time) {
	for ip, b := range r.peers {
		if b.lim.TokensAt(now) >= float64(r.burst) {
			delete(r.peers, ip)
		}
	}
	// Then the peer with the most tokens left (the oldest seen among
	// equals): forgetting it frees it the least, while a peer being
	// limited keeps its empty bucket.
	for len(r.peers) >= r.maxPeers {
		var victim netip.Addr
		most, at := -1.0, time.Time{}
		for ip, b := range r.peers {
			tok := b.lim.TokensAt(now)
			if tok > most || tok == most && b.seen.Before(at) {
				victim, most, at = ip, tok, b.seen
			}
		}
		delete(r.peers, victim)
	}
}

// tracked is how many peers the limiter holds.
func (r *registerLimiter) tracked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.peers)
}

// unary refuses a Register past its peer's rate with ResourceExhausted,
// before any certificate, token or registry work is spent on it.
func (r *registerLimiter) unary(ctx context.Context, req any, info *ggrpc.UnaryServerInfo, next ggrpc.UnaryHandler) (any, error) {
	if info.FullMethod != agentv1.AgentService_Register_FullMethodName {
		return next(ctx, req)
	}
	var ip netip.Addr
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		ip = peerIP(p.Addr)
	}
	if ip.IsLoopback() && !r.limitLoopback {
		return next(ctx, req)
	}
	ok, wait, logIt := r.allow(ip)
	if ok {
		return next(ctx, req)
	}
	if logIt {
		r.log.Warn("Register refused: rate limit", zap.String("event", "register_rate_limited"), zap.String("peer", ip.String()),
			zap.Int("burst", r.burst), zap.Float64("per_second", float64(r.every)))
	}
	return nil, status.Errorf(codes.ResourceExhausted,
		"register: too many Register calls from %s (at most %d at once, then %s per second); retry in %s",
		ip, r.burst, perSecond(r.every), wait.Round(time.Millisecond))
}

func perSecond(l rate.Limit) string {
	if l == rate.Inf || math.IsInf(float64(l), 1) {
		return "any number"
	}
	return fmt.Sprintf("%g", float64(l))
}
