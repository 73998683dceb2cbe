// Package netprobe holds the two small programs of the container-level
// firewall tests and the JSON shapes they print, so that the programs and
// the helpers that read them (pkg/cptest) share one definition.
//
// The stand-in (cmd/standin) takes the place of a firewall stack member at
// its fixed address: it listens on the TCP and UDP ports it is given and on
// DNS (UDP and TCP), answers every TCP connection and UDP datagram with the
// line "standin <name> <port>\n", answers every DNS A query with a fixed
// address, and prints one Record per connection, datagram or query on
// stdout, as a JSON line (tests read them from the container's log: no
// route from the host to the container is needed).
//
// The probe (cmd/probe) runs inside an agent container and performs the
// attempts given as arguments (see ParseAttempt), printing one Outcome per
// attempt on stdout, as a JSON line. Failures are outcomes, not exits: the
// probe exits 0 unless its arguments are wrong.
package netprobe

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// DefaultDNSAnswer is the address the stand-in answers A queries with. It
// is in TEST-NET-2 (RFC 5737): no real resolver hands it out, so a probe
// that gets it back has reached the stand-in.
var DefaultDNSAnswer = netip.MustParseAddr("198.51.100.53")

// DefaultDNSName is the name the probe's DNS attempts ask for when given
// none; the .test TLD (RFC 6761) never resolves for real.
const DefaultDNSName = "probe.clawker.test"

// DefaultProxyPort is the egress proxy's catch-all listener port
// (settings' firewall.proxy_port default).
const DefaultProxyPort = 15001

// DNSPort is where the firewall's DNS server listens, UDP and TCP.
const DNSPort = 53

// Banner is the line a stand-in named name answers on port with, newline
// excluded.
func Banner(name string, port int) string {
	return "standin " + name + " " + strconv.Itoa(port)
}

// Record is one JSON line of the stand-in's stdout.
type Record struct {
	Standin string `json:"standin"` // its -name
	Seq     int64  `json:"seq"`     // 1, 2, ... in the order written
	// Event is "ready" (every listener bound; Listen says where), "tcp"
	// (a connection), "udp" (a datagram that is not a DNS query), "dns" (a
	// query, over UDP or TCP: Proto says which) or "error".
	Event string    `json:"event"`
	Time  time.Time `json:"time"`
	Proto string    `json:"proto,omitempty"` // "tcp" or "udp"
	// Peer is the client's address as the stand-in saw it.
	Peer string `json:"peer,omitempty"`
	// Local is the address the client reached (TCP only: a UDP listener
	// on the wildcard address does not learn it); LocalPort is its port.
	Local     string `json:"local,omitempty"`
	LocalPort int    `json:"local_port,omitempty"`
	// Data is the first line the client sent (up to MaxData bytes, line
	// end removed); for a DNS query, empty.
	Data string `json:"data,omitempty"`
	// QName (lower case, no final dot) and QType ("A", "AAAA",
	// "TYPE65"...) of a DNS query, and the addresses answered.
	QName   string   `json:"qname,omitempty"`
	QType   string   `json:"qtype,omitempty"`
	Answers []string `json:"answers,omitempty"`
	// Reply is the line answered (newline excluded), for tcp and udp.
	Reply  string   `json:"reply,omitempty"`
	Listen []string `json:"listen,omitempty"` // ready: "tcp 0.0.0.0:15001", ...
	Error  string   `json:"error,omitempty"`
}

// PeerAddr is Peer parsed (the zero value when it does not parse).
func (r Record) PeerAddr() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(r.Peer)
	return ap
}

// PeerIP is the client's address without its port, unmapped.
func (r Record) PeerIP() netip.Addr { return r.PeerAddr().Addr().Unmap() }

// MaxData bounds Record.Data and the reply lines a probe keeps.
const MaxData = 512

// Outcome is one JSON line of the probe's stdout: what one attempt did.
type Outcome struct {
	Seq   int64 `json:"seq"`   // 1, 2, ... over the probe's run
	Round int   `json:"round"` // the loop round (1 without -loop)
	// What is the attempt as given on the command line; Kind its kind
	// ("tcp", "udp", "dns", "dnstcp", "socket", "sleep"), or "done" for
	// the last line of a run (Reason says why it ended).
	What   string    `json:"what"`
	Kind   string    `json:"kind"`
	Target string    `json:"target,omitempty"` // the address attempted
	Time   time.Time `json:"time"`             // when the attempt started
	Millis float64   `json:"ms"`               // how long it took
	UID    int       `json:"uid"`              // real uid that made it
	GID    int       `json:"gid"`
	// OK: the whole exchange worked (connected and got a reply line; the
	// datagram was answered; a DNS answer came back with the query's id;
	// the socket was created).
	OK bool `json:"ok"`
	// Connected: a TCP connect or UDP connect succeeded (an attempt may
	// connect and still fail later).
	Connected bool `json:"connected,omitempty"`
	// Errno is the symbolic errno of the failure ("ECONNREFUSED",
	// "EPERM"...); a deadline that passed is "ETIMEDOUT" with Timeout set.
	Errno   string `json:"errno,omitempty"`
	Timeout bool   `json:"timeout,omitempty"`
	// Syscall is the step that failed: "socket", "connect", "sendto",
	// "write", "read", "recvfrom", "setuid"...
	Syscall string `json:"syscall,omitempty"`
	Error   string `json:"error,omitempty"`
	// Local is the socket's own address (for an unconnected UDP socket
	// the wildcard address: only its port tells), Remote the peer's (getpeername
	// for TCP, the reply's source for UDP and DNS: with a DNS redirect in
	// place, the recvmsg hook shows the address the query was sent to).
	Local  string `json:"local,omitempty"`
	Remote string `json:"remote,omitempty"`
	// Sent is the line sent (newline excluded); Reply the first line
	// received, or for DNS the answers joined by ",".
	Sent    string   `json:"sent,omitempty"`
	Reply   string   `json:"reply,omitempty"`
	Answers []string `json:"answers,omitempty"` // DNS: A/AAAA addresses
	RCode   int      `json:"rcode,omitempty"`   // DNS response code
	// HTTP: the response status code, the server certificate's SHA-256
	// (https) and how many body bytes were read.
	Status int    `json:"status,omitempty"`
	Cert   string `json:"cert,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
	Reason string `json:"reason,omitempty"` // "done" lines only
}

// RemoteAddr is Remote parsed (zero when it does not parse).
func (o Outcome) RemoteAddr() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(o.Remote)
	return ap
}

// LocalAddr is Local parsed (zero when it does not parse).
func (o Outcome) LocalAddr() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(o.Local)
	return ap
}

// ParseRecords picks the stand-in records out of output (other lines are
// ignored: a log may hold anything else).
func ParseRecords(output string) []Record {
	var out []Record
	for _, l := range strings.Split(output, "\n") {
		var r Record
		if json.Unmarshal([]byte(strings.TrimSpace(l)), &r) == nil && r.Standin != "" && r.Event != "" {
			out = append(out, r)
		}
	}
	return out
}

// ParseOutcomes picks the probe's outcomes out of output, "done" lines
// included (other lines are ignored).
func ParseOutcomes(output string) []Outcome {
	var out []Outcome
	for _, l := range strings.Split(output, "\n") {
		var o Outcome
		if json.Unmarshal([]byte(strings.TrimSpace(l)), &o) == nil && o.Kind != "" && o.Seq > 0 {
			out = append(out, o)
		}
	}
	return out
}
