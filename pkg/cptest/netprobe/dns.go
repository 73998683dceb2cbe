package netprobe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Just enough DNS (RFC 1035) for one question and A/AAAA answers: the
// module has no DNS library, and the programs stay standard library plus
// x/sys.

// DNS record types the programs name.
const (
	TypeA    uint16 = 1
	TypeAAAA uint16 = 28
)

const (
	dnsHeaderLen = 12
	classIN      = 1
	flagQR       = 1 << 15
	flagAA       = 1 << 10
	flagRD       = 1 << 8
	flagRA       = 1 << 7
	answerTTL    = 5
)

// TypeName is "A", "AAAA", or "TYPE<n>".
func TypeName(t uint16) string {
	switch t {
	case TypeA:
		return "A"
	case TypeAAAA:
		return "AAAA"
	}
	return "TYPE" + strconv.Itoa(int(t))
}

// ParseType accepts "A", "AAAA" or a number.
func ParseType(s string) (uint16, error) {
	switch strings.ToUpper(s) {
	case "A":
		return TypeA, nil
	case "AAAA":
		return TypeAAAA, nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToUpper(s), "TYPE"), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("DNS type %q: want A, AAAA or a number", s)
	}
	return uint16(n), nil
}

// BuildQuery is a recursive query for name (dots between labels, final dot
// optional) of type qtype.
func BuildQuery(id uint16, name string, qtype uint16) ([]byte, error) {
	msg := make([]byte, dnsHeaderLen, dnsHeaderLen+len(name)+6)
	binary.BigEndian.PutUint16(msg[0:], id)
	binary.BigEndian.PutUint16(msg[2:], flagRD)
	binary.BigEndian.PutUint16(msg[4:], 1) // QDCOUNT
	msg, err := appendName(msg, name)
	if err != nil {
		return nil, err
	}
	msg = binary.BigEndian.AppendUint16(msg, qtype)
	return binary.BigEndian.AppendUint16(msg, classIN), nil
}

func appendName(msg []byte, name string) ([]byte, error) {
	name = strings.TrimSuffix(name, ".")
	if name != "" {
		for _, l := range strings.Split(name, ".") {
			if l == "" || len(l) > 63 {
				return nil, fmt.Errorf("DNS name %q: empty or over-long label", name)
			}
			msg = append(msg, byte(len(l)))
			msg = append(msg, l...)
		}
	}
	return append(msg, 0), nil
}

// readName reads the (possibly compressed) name at off, returning it and
// the offset just past it in msg.
func readName(msg []byte, off int) (string, int, error) {
	var labels []string
	end := -1
	for jumps := 0; ; {
		if off >= len(msg) {
			return "", 0, errors.New("name runs past the message")
		}
		n := int(msg[off])
		switch {
		case n == 0:
			if end < 0 {
				end = off + 1
			}
			return strings.Join(labels, "."), end, nil
		case n&0xc0 == 0xc0:
			if off+1 >= len(msg) {
				return "", 0, errors.New("truncated name pointer")
			}
			if end < 0 {
				end = off + 2
			}
			if jumps++; jumps > 20 {
				return "", 0, errors.New("name pointer loop")
			}
			off = int(binary.BigEndian.Uint16(msg[off:]) & 0x3fff)
		case n&0xc0 != 0:
			return "", 0, errors.New("unknown label type")
		default:
			if off+1+n > len(msg) {
				return "", 0, errors.New("label runs past the message")
			}
			labels = append(labels, string(msg[off+1:off+1+n]))
			off += 1 + n
		}
	}
}

// Question is the first question of a DNS message.
type Question struct {
	ID    uint16
	Flags uint16
	Name  string // as sent, without the final dot
	Type  uint16
	End   int // offset just past the question
}

// ParseQuestion reads the header and the first question of msg; it fails
// on anything that is not a plausible query, so that a stand-in can tell a
// DNS query from other bytes sent to port 53.
func ParseQuestion(msg []byte) (Question, error) {
	if len(msg) < dnsHeaderLen {
		return Question{}, errors.New("shorter than a DNS header")
	}
	q := Question{ID: binary.BigEndian.Uint16(msg), Flags: binary.BigEndian.Uint16(msg[2:])}
	if binary.BigEndian.Uint16(msg[4:]) != 1 {
		return Question{}, errors.New("not exactly one question")
	}
	name, off, err := readName(msg, dnsHeaderLen)
	if err != nil {
		return Question{}, err
	}
	if off+4 > len(msg) {
		return Question{}, errors.New("truncated question")
	}
	q.Name, q.Type, q.End = name, binary.BigEndian.Uint16(msg[off:]), off+4
	return q, nil
}

// BuildAnswer answers the query q (parsed from query) with addrs: those
// of q's type (A takes IPv4, AAAA IPv6) become answer records; none is
// NOERROR with no answer.
func BuildAnswer(query []byte, q Question, addrs []netip.Addr) []byte {
	msg := make([]byte, 0, q.End+len(addrs)*28)
	msg = append(msg, query[:q.End]...)
	binary.BigEndian.PutUint16(msg[2:], flagQR|flagAA|flagRA|(q.Flags&flagRD))
	binary.BigEndian.PutUint16(msg[6:], 0)  // ANCOUNT, set below
	binary.BigEndian.PutUint16(msg[8:], 0)  // NSCOUNT
	binary.BigEndian.PutUint16(msg[10:], 0) // ARCOUNT (drops an EDNS OPT)
	var n uint16
	for _, a := range addrs {
		var rdata []byte
		switch {
		case q.Type == TypeA && a.Is4():
			b := a.As4()
			rdata = b[:]
		case q.Type == TypeAAAA && a.Is6():
			b := a.As16()
			rdata = b[:]
		default:
			continue
		}
		msg = append(msg, 0xc0, dnsHeaderLen) // the question's name
		msg = binary.BigEndian.AppendUint16(msg, q.Type)
		msg = binary.BigEndian.AppendUint16(msg, classIN)
		msg = binary.BigEndian.AppendUint32(msg, answerTTL)
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(rdata)))
		msg = append(msg, rdata...)
		n++
	}
	binary.BigEndian.PutUint16(msg[6:], n)
	return msg
}

// Response is what a probe learns from a DNS answer.
type Response struct {
	ID      uint16
	RCode   int
	Answers []netip.Addr // A and AAAA records, in order
}

// ParseResponse reads a DNS response: its id, rcode and address answers.
func ParseResponse(msg []byte) (Response, error) {
	if len(msg) < dnsHeaderLen {
		return Response{}, errors.New("shorter than a DNS header")
	}
	flags := binary.BigEndian.Uint16(msg[2:])
	if flags&flagQR == 0 {
		return Response{}, errors.New("not a response (QR unset)")
	}
	r := Response{ID: binary.BigEndian.Uint16(msg), RCode: int(flags & 0xf)}
	qd, an := int(binary.BigEndian.Uint16(msg[4:])), int(binary.BigEndian.Uint16(msg[6:]))
	off := dnsHeaderLen
	for range qd {
		_, next, err := readName(msg, off)
		if err != nil {
			return r, err
		}
		off = next + 4
	}
	for range an {
		_, next, err := readName(msg, off)
		if err != nil {
			return r, err
		}
		if next+10 > len(msg) {
			return r, errors.New("truncated answer")
		}
		typ := binary.BigEndian.Uint16(msg[next:])
		rdlen := int(binary.BigEndian.Uint16(msg[next+8:]))
		rd := next + 10
		if rd+rdlen > len(msg) {
			return r, errors.New("truncated answer data")
		}
		switch {
		case typ == TypeA && rdlen == 4:
			r.Answers = append(r.Answers, netip.AddrFrom4([4]byte(msg[rd:rd+4])))
		case typ == TypeAAAA && rdlen == 16:
			r.Answers = append(r.Answers, netip.AddrFrom16([16]byte(msg[rd:rd+16])))
		}
		off = rd + rdlen
	}
	return r, nil
}
