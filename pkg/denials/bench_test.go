package denials

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// fullWindow is a window at its bound: DefaultSize refusals over 512
// names (a third proxy, a third DNS, a third kernel) from 16 agents, each
// record with strings of its own, as the siblings' decoded reports have.
func fullWindow() *Window {
	w := New(DefaultSize)
	t0 := time.Now().Add(-time.Hour)
	for i := range DefaultSize {
		r := Record{Time: t0.Add(time.Duration(i) * time.Millisecond), Src: netip.AddrFrom4([4]byte{10, 99, 0, byte(2 + i%16)})}
		switch i % 3 {
		case 0:
			r.Where, r.Name, r.Proto, r.Reason = "proxy", fmt.Sprintf("host%03d.example.com", i%512), "https", "unlisted name"
		case 1:
			r.Where, r.Name, r.Reason = "dns", fmt.Sprintf("host%03d.example.com", i%512), "NXDOMAIN: unlisted"
		default:
			r.Where, r.Name, r.Proto, r.Reason = WhereKernel, fmt.Sprintf("192.0.2.%d:%d", i%250, 1000+i%512), "udp", "udp"
		}
		w.Add(r)
	}
	return w
}

// BenchmarkWindowAtBound reports the heap a full window holds (bytes per
// window, measured after a GC with the window alive), strings included.
func BenchmarkWindowAtBound(b *testing.B) {
	var held uint64
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		w := fullWindow()
		runtime.GC()
		runtime.ReadMemStats(&after)
		held += after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(w)
	}
	b.ReportMetric(float64(held)/float64(b.N), "heap-B/window")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDeniedFullWindow is the work of one `clawker firewall denied`
// inside the CP with a full window: read it, group it and name the peers
// (the RPC and the two actor asks around it are not in it).
func BenchmarkDeniedFullWindow(b *testing.B) {
	w := fullWindow()
	// As the firewall actor names them: two map lookups and a concatenation.
	byIP := map[netip.Addr]string{}
	byID := map[string][2]string{}
	for i := range 16 {
		id := fmt.Sprintf("c%02d", i)
		byIP[netip.AddrFrom4([4]byte{10, 99, 0, byte(2 + i)})] = id
		byID[id] = [2]string{"proj", fmt.Sprintf("agent-%d", i)}
	}
	nameOf := func(ip netip.Addr) string {
		if w, ok := byID[byIP[ip]]; ok {
			return w[0] + "/" + w[1]
		}
		return ""
	}
	b.ReportAllocs()
	for b.Loop() {
		gs := Summarize(w.Since(time.Time{}), nameOf)
		NamePeers(gs, nameOf)
		if len(gs) == 0 {
			b.Fatal("no groups")
		}
	}
}
