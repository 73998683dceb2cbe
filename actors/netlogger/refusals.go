package netlogger

import (
	"errors"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/clawker/clawker-cp/bpf"
	"github.com/clawker/clawker-cp/pkg/denials"
	"github.com/clawker/clawker-cp/pkg/egress"
	"github.com/clawker/clawker-cp/pkg/netlog"
)

// Kernel refusals for `clawker firewall denied`: what the programs refuse
// (UDP, the agent network, the CP's other ports, IPv6, raw sockets) never
// reaches a sibling, so the siblings' reports cannot show it. The eBPF
// events carry it. With a collector, the pipeline's reader hands each
// decoded record to the feed too (netlog.Config.OnEvent); without one the
// programs emit the refusals alone (ebpf.Config.EventsDenied) and the feed
// reads the ring itself. Either way each refusal lands in the firewall's
// window of recent denials, named by the agent's address.

// refusalFeed turns refusal events into denials records. A record names
// the agent by its cgroup; the firewall, asked for the window, maps that
// to the agent (the eBPF owner's table), so the reader never waits on an
// actor.
type refusalFeed struct {
	win *denials.Window

	stop chan struct{} // own reader only
	done chan struct{}
}

func newRefusalFeed(win *denials.Window) *refusalFeed {
	if win == nil {
		return nil
	}
	return &refusalFeed{win: win}
}

// add records ev when it is a refusal.
func (f *refusalFeed) add(ev *bpf.EgressEvent, at time.Time) {
	v := egress.Verdict(ev.Verdict)
	if f == nil || !v.Denied() {
		return
	}
	f.win.Add(denials.Record{Time: at, CgroupID: ev.CgroupId, Where: denials.WhereKernel, Name: netlog.Orig(ev).String(),
		Proto: egress.Proto(ev.Proto).String(), Reason: v.String()})
}

// read runs the feed's own reader on src until stop or the source ends.
func (f *refusalFeed) read(src netlog.Source, log *zap.Logger) {
	f.stop, f.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(f.done)
		defer src.Close()
		var ev bpf.EgressEvent
		for {
			select {
			case <-f.stop:
				return
			default:
			}
			raw, err := src.Read(time.Now().Add(250 * time.Millisecond))
			switch {
			case err == nil:
			case errors.Is(err, os.ErrDeadlineExceeded):
				continue
			case errors.Is(err, netlog.ErrClosed), errors.Is(err, netlog.ErrFlushed):
				return
			default:
				log.Warn("reading the kernel's refusals failed; `firewall denied` shows the siblings' alone", zap.String("event", "netlogger_unavailable"), zap.Error(err))
				return
			}
			if netlog.Decode(raw, &ev) == nil {
				f.add(&ev, time.Now())
			}
		}
	}()
}

// close ends the feed's own reader, if it runs, and waits for it.
func (f *refusalFeed) close() {
	if f == nil || f.stop == nil {
		return
	}
	close(f.stop)
	<-f.done
	f.stop = nil
}
