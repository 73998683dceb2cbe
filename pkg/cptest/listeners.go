package cptest

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	docker "github.com/moby/moby/client"
)

// Listener is one socket waiting for peers in a network namespace: a TCP
// socket in LISTEN, or a bound UDP socket not connected to a peer.
type Listener struct {
	Proto string // "tcp" or "udp"
	Addr  netip.AddrPort
}

func (l Listener) String() string { return l.Proto + " " + l.Addr.String() }

// Loopback says whether only the namespace itself can reach it.
func (l Listener) Loopback() bool { return l.Addr.Addr().Unmap().IsLoopback() }

// ContainerListeners lists every listening socket in the network namespace
// of a running container, read on the host from /proc/<its pid>/net: the
// container's own tools are not needed (FROM-scratch images have none).
func ContainerListeners(t testing.TB, d *docker.Client, id string) []Listener {
	t.Helper()
	in, err := d.ContainerInspect(context.Background(), id, docker.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("cptest: inspecting %s: %v", id, err)
	}
	if in.Container.State == nil || in.Container.State.Pid <= 0 {
		t.Fatalf("cptest: %s is not running", id)
	}
	ls, err := NetnsListeners(in.Container.State.Pid)
	if err != nil {
		t.Fatalf("cptest: listeners of %s: %v", id, err)
	}
	return ls
}

// NetnsListeners lists the listening sockets of the network namespace of
// process pid, sorted.
func NetnsListeners(pid int) ([]Listener, error) {
	var out []Listener
	for _, f := range []struct{ file, proto, state string }{
		{"tcp", "tcp", "0A"}, {"tcp6", "tcp", "0A"}, // TCP_LISTEN
		{"udp", "udp", "07"}, {"udp6", "udp", "07"}, // TCP_CLOSE: bound, unconnected
	} {
		ls, err := readProcNet("/proc/"+strconv.Itoa(pid)+"/net/"+f.file, f.proto, f.state)
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Proto != out[j].Proto {
			return out[i].Proto < out[j].Proto
		}
		return out[i].Addr.Compare(out[j].Addr) < 0
	})
	return out, nil
}

func readProcNet(path, proto, state string) ([]Listener, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil // no IPv6 in this kernel
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Listener
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != state {
			continue
		}
		if proto == "udp" && fields[2] != "00000000:0000" && !strings.HasPrefix(fields[2], "00000000000000000000000000000000:") {
			continue // connected to a peer
		}
		ap, err := parseProcAddr(fields[1])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, Listener{Proto: proto, Addr: ap})
	}
	return out, sc.Err()
}

// parseProcAddr reads /proc/net/tcp's "0100007F:1F90": the address in the
// kernel's byte order (32-bit words, host order), the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	addrHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(addrHex)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port in %q", s)
	}
	// Each 32-bit word was printed as a host-order (little-endian here)
	// integer: swap back to network order.
	for i := 0; i+4 <= len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}
