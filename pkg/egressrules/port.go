package egressrules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// PortRange is an inclusive range of TCP ports; a single port has Lo == Hi.
// The zero value means "the proto's default port". In YAML and JSON it is a
// number when Lo == Hi and the string "lo-hi" otherwise; a numeric string
// ("443") is accepted on input too.
type PortRange struct{ Lo, Hi uint16 }

// Port is the range holding the single port p.
func Port(p uint16) PortRange { return PortRange{Lo: p, Hi: p} }

// String is "443" or "8000-8100", and "" for the zero value.
func (p PortRange) String() string {
	switch {
	case p.IsZero():
		return ""
	case p.Lo == p.Hi:
		return strconv.Itoa(int(p.Lo))
	}
	return strconv.Itoa(int(p.Lo)) + "-" + strconv.Itoa(int(p.Hi))
}

// Contains reports whether port is in the range.
func (p PortRange) Contains(port uint16) bool { return p.Lo <= port && port <= p.Hi }

// IsZero reports the zero value ("use the default"), so that omitempty and
// omitzero leave it out.
func (p PortRange) IsZero() bool { return p.Lo == 0 && p.Hi == 0 }

// ParsePortRange parses "443", "8000-8100" or "" (the zero value). Its error
// is a *FieldError for field port (Index -1) that says what to write.
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return PortRange{}, nil
	}
	bad := func(msg string) (PortRange, error) {
		return PortRange{}, &FieldError{Index: -1, Field: fieldPort, Value: s, Msg: msg}
	}
	loText, hiText, isRange := strings.Cut(s, "-")
	if !isRange {
		hiText = loText
	}
	lo, errLo := strconv.ParseUint(strings.TrimSpace(loText), 10, 32)
	hi, errHi := strconv.ParseUint(strings.TrimSpace(hiText), 10, 32)
	switch {
	case errLo != nil || errHi != nil:
		return bad("not a port or range (write 443 or 8000-8100)")
	case lo < 1 || hi < 1 || lo > 65535 || hi > 65535:
		return bad("ports are 1-65535 (write 443 or 8000-8100, or omit port for the proto's default)")
	case lo > hi:
		return bad(fmt.Sprintf("the range is reversed (write %d-%d)", hi, lo))
	}
	return PortRange{Lo: uint16(lo), Hi: uint16(hi)}, nil
}

// MarshalYAML writes a number for a single port and "lo-hi" for a range.
func (p PortRange) MarshalYAML() (any, error) {
	switch {
	case p.IsZero():
		return nil, nil
	case p.Lo == p.Hi:
		return int(p.Lo), nil
	}
	return p.String(), nil
}

// UnmarshalYAML reads 443, "443" or 8000-8100.
func (p *PortRange) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &FieldError{Index: -1, Field: fieldPort, Value: "", Msg: "not a port or range (write 443 or 8000-8100)"}
	}
	r, err := ParsePortRange(n.Value)
	if err != nil {
		return err
	}
	*p = r
	return nil
}

// MarshalJSON writes a number for a single port, "lo-hi" for a range and
// null for the zero value.
func (p PortRange) MarshalJSON() ([]byte, error) {
	switch {
	case p.IsZero():
		return []byte("null"), nil
	case p.Lo == p.Hi:
		return strconv.AppendUint(nil, uint64(p.Lo), 10), nil
	}
	return json.Marshal(p.String())
}

// UnmarshalJSON reads 443, "443" or "8000-8100"; null leaves p unchanged.
func (p *PortRange) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		return nil
	}
	text := string(data)
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &text); err != nil {
			return err
		}
	}
	r, err := ParsePortRange(text)
	if err != nil {
		return err
	}
	*p = r
	return nil
}
