package egressproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Kind is what the first bytes of a connection look like.
type Kind int

const (
	KindOther Kind = iota
	KindTLS
	KindHTTP
)

func (k Kind) String() string {
	switch k {
	case KindTLS:
		return "https"
	case KindHTTP:
		return "http"
	}
	return "other"
}

// Peeked is what the proxy learned from the first bytes of a connection.
type Peeked struct {
	Kind Kind
	// Bytes is every byte read from the connection so far; it is replayed
	// upstream before splicing.
	Bytes []byte
	// SNI is the (outer) server name of a ClientHello, lower-cased.
	SNI string
	// ECH reports that the ClientHello carried an encrypted_client_hello
	// extension (real or GREASE). It is informational: the decision is on the
	// outer SNI, because refusing ECH would break every browser-like client.
	ECH bool
}

const (
	recordHeaderLen  = 5
	recordTypeHS     = 0x16
	maxPlaintextLen  = 1 << 14 // RFC 8446 5.1
	maxHelloLen      = 1 << 16 // far above real hellos (~2 KB with PQ key shares)
	hsTypeClientHelo = 1
	extServerName    = 0
	extECH           = 0xfe0d
)

var (
	errNotHello = errors.New("not a TLS ClientHello")
	errNoSNI    = errors.New("ClientHello carries no SNI")
)

// httpMethods are the request-line starts the catch-all accepts as HTTP/1.x.
// CONNECT is recognised so it can be refused with a clear 403 rather than a
// reset.
var httpMethods = []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "TRACE ", "CONNECT "}

// Peek reads the first bytes of a connection and classifies them. For TLS it
// reads the complete ClientHello, which may span several records, reading
// exactly the records' bytes so nothing beyond the hello is consumed and the
// caller can hand the bare connection to splice. For HTTP it reads only the
// first 5 bytes; the request itself is parsed by the HTTP path.
//
// A ClientHello without a usable SNI returns Kind TLS with an error.
func Peek(r io.Reader) (Peeked, error) {
	var p Peeked
	hdr := make([]byte, recordHeaderLen, 512)
	if _, err := io.ReadFull(r, hdr); err != nil {
		p.Bytes = hdr[:0]
		return p, fmt.Errorf("reading first bytes: %w", err)
	}
	p.Bytes = hdr
	if hdr[0] == recordTypeHS && hdr[1] == 3 {
		p.Kind = KindTLS
		raw, hello, err := readHello(r, hdr)
		p.Bytes = raw
		if err != nil {
			return p, err
		}
		p.SNI, p.ECH, err = parseHello(hello)
		return p, err
	}
	if looksHTTP(hdr) {
		p.Kind = KindHTTP
	}
	return p, nil
}

func looksHTTP(b []byte) bool {
	for _, m := range httpMethods {
		n := min(len(m), len(b))
		if string(b[:n]) == m[:n] {
			return true
		}
	}
	return false
}

// readHello reads TLS handshake records until a whole ClientHello message is
// buffered. raw is every byte read (headers included) for replay; hello is the
// handshake message body (after its 4-byte header).
func readHello(r io.Reader, first []byte) (raw, hello []byte, err error) {
	raw = first
	hdr := first
	var hs []byte
	for {
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		if n == 0 || n > maxPlaintextLen {
			return raw, nil, fmt.Errorf("%w: record length %d", errNotHello, n)
		}
		start := len(raw)
		raw = slices.Grow(raw, n)[:start+n]
		if _, err := io.ReadFull(r, raw[start:]); err != nil {
			return raw[:start], nil, fmt.Errorf("reading ClientHello record: %w", err)
		}
		if hs == nil {
			hs = raw[start:] // the common single-record hello: no copy
		} else {
			hs = append(slices.Clip(hs), raw[start:]...)
		}
		if len(hs) >= 4 {
			if hs[0] != hsTypeClientHelo {
				return raw, nil, fmt.Errorf("%w: handshake type %d", errNotHello, hs[0])
			}
			msgLen := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
			if msgLen > maxHelloLen {
				return raw, nil, fmt.Errorf("%w: ClientHello of %d bytes", errNotHello, msgLen)
			}
			if len(hs) >= 4+msgLen {
				return raw, hs[4 : 4+msgLen], nil
			}
		}
		// The hello continues in the next record, which must be a handshake
		// record too (RFC 8446 5.1 forbids interleaving other types).
		start = len(raw)
		raw = slices.Grow(raw, recordHeaderLen)[:start+recordHeaderLen]
		if _, err := io.ReadFull(r, raw[start:]); err != nil {
			return raw[:start], nil, fmt.Errorf("reading ClientHello record: %w", err)
		}
		hdr = raw[start:]
		if hdr[0] != recordTypeHS || hdr[1] != 3 {
			return raw, nil, fmt.Errorf("%w: record type %#x inside ClientHello", errNotHello, hdr[0])
		}
	}
}

// reader is a minimal bounds-checked cursor over a ClientHello.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() int {
	v := r.take(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (r *reader) u16() int {
	v := r.take(2)
	if v == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(v))
}

func (r *reader) vec8() reader  { return reader{b: r.take(r.u8()), bad: r.bad} }
func (r *reader) vec16() reader { return reader{b: r.take(r.u16()), bad: r.bad} }

// parseHello extracts the host_name SNI and notes an ECH extension from a
// ClientHello body (RFC 8446 4.1.2, RFC 6066 3).
func parseHello(b []byte) (sni string, ech bool, err error) {
	r := reader{b: b}
	r.take(2 + 32) // legacy_version, random
	if sid := r.vec8(); len(sid.b) > 32 {
		return "", false, fmt.Errorf("%w: session id of %d bytes", errNotHello, len(sid.b))
	}
	if cs := r.vec16(); len(cs.b) < 2 || len(cs.b)%2 != 0 {
		return "", false, fmt.Errorf("%w: bad cipher suites", errNotHello)
	}
	if cm := r.vec8(); len(cm.b) < 1 {
		return "", false, fmt.Errorf("%w: bad compression methods", errNotHello)
	}
	if r.bad {
		return "", false, fmt.Errorf("%w: truncated", errNotHello)
	}
	if len(r.b) == 0 {
		return "", false, errNoSNI // no extensions at all
	}
	exts := r.vec16()
	if r.bad || len(r.b) != 0 {
		return "", false, fmt.Errorf("%w: bad extensions length", errNotHello)
	}
	seen := map[int]bool{}
	for len(exts.b) > 0 && !exts.bad {
		typ := exts.u16()
		data := exts.vec16()
		if exts.bad {
			break
		}
		if seen[typ] {
			// RFC 8446 4.2: a repeated extension is fatal; two server_name
			// extensions could also be read differently by us and the server.
			return "", false, fmt.Errorf("%w: duplicate extension %d", errNotHello, typ)
		}
		seen[typ] = true
		switch typ {
		case extECH:
			ech = true
		case extServerName:
			names := data.vec16()
			for len(names.b) > 0 && !names.bad {
				nameType := names.u8()
				name := names.vec16()
				if names.bad {
					break
				}
				if nameType != 0 {
					continue
				}
				if sni != "" {
					return "", false, fmt.Errorf("%w: two host_name entries", errNotHello)
				}
				if len(name.b) == 0 {
					return "", false, fmt.Errorf("%w: empty host_name", errNotHello)
				}
				sni = string(name.b)
			}
			if names.bad || data.bad {
				return "", false, fmt.Errorf("%w: malformed server_name", errNotHello)
			}
		}
	}
	if exts.bad {
		return "", false, fmt.Errorf("%w: malformed extensions", errNotHello)
	}
	if sni == "" {
		return "", ech, errNoSNI
	}
	host, err := normalizeHost(sni)
	if err != nil {
		return "", ech, err
	}
	return host, ech, nil
}

// normalizeHost lower-cases a DNS name, drops one trailing dot and refuses
// anything that is not a plausible host name, so the policy and the resolver
// see the same string the server will.
func normalizeHost(h string) (string, error) {
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if h == "" || len(h) > 253 {
		return "", fmt.Errorf("invalid host name %q", h)
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return h, nil // IP literal: the policy decides (normally refuses)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' {
			continue
		}
		return "", fmt.Errorf("invalid host name %q", h)
	}
	if strings.Contains(h, "..") || h[0] == '.' {
		return "", fmt.Errorf("invalid host name %q", h)
	}
	return h, nil
}

// PeekDecide is the pure decision step of a TLS connection: peek the
// ClientHello from r and decide its SNI under p at port 443. It does no DNS
// and no dialling, so a benchmark can time "peek + policy" alone. A nil p
// refuses (fail closed).
func PeekDecide(r io.Reader, p *egressrules.Policy) (Peeked, egressrules.Decision, error) {
	pk, err := Peek(r)
	if err != nil {
		return pk, egressrules.Decision{Reason: err.Error()}, err
	}
	if pk.Kind != KindTLS {
		return pk, egressrules.Decision{Reason: "not TLS"}, nil
	}
	return pk, decide(p, pk.SNI, egressrules.HTTPS, 443), nil
}

func decide(p *egressrules.Policy, host string, proto egressrules.Proto, port uint16) egressrules.Decision {
	if p == nil {
		return egressrules.Decision{Reason: "no policy loaded (fail closed)"}
	}
	return p.Decide(host, proto, port)
}
