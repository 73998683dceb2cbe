package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
	"github.com/clawker/clawker-cp/pkg/stackapi"
	"github.com/clawker/clawker-cp/scripts/dns/clawkerfw"
)

// wireControlPlane connects the plugin to the control plane's stack
// service (--cp): every answer is reported there and the reply waits for
// it (the control plane writes the address into the kernel first), and
// the policy is fetched from there and swapped in place on every change.
// The mTLS material comes from the environment the control plane set
// when it created this container.
func wireControlPlane(fw *clawkerfw.Firewall, o *options) error {
	if o.cp == "" {
		return nil
	}
	tlsCfg, err := stackapi.ClientTLSFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	c := stackapi.NewClient(o.cp, tlsCfg)
	c.Logf = func(format string, args ...any) { log.Printf("clawker-dns: "+format, args...) }
	known := &reported{entries: map[netip.Addr]reportedEntry{}}
	refusals := stackapi.NewRefusalQueue(context.Background(), c)
	fw.OnBlocked = func(name string, client net.Addr) {
		src := client.String()
		if ap, err := netip.ParseAddrPort(src); err == nil {
			src = ap.Addr().Unmap().String()
		}
		refusals.Add(stackapi.Refusal{Time: time.Now(), Src: src, Name: name, Reason: "no rule allows the name (NXDOMAIN)"})
	}
	fw.Reporter = clawkerfw.ReporterFunc(func(ctx context.Context, answers []clawkerfw.Answer) error {
		now := time.Now()
		if known.covers(answers, now) {
			return nil
		}
		out := make([]stackapi.Answer, len(answers))
		for i, a := range answers {
			out[i] = stackapi.Answer{Name: a.Name, IP: a.IP, RuleIDs: a.RuleIDs, TTL: a.TTL}
		}
		if err := c.Report(ctx, out); err != nil {
			return err
		}
		known.remember(answers, now)
		return nil
	})
	go func() {
		_ = c.WatchPolicy(context.Background(), func(doc egressrules.Doc) error {
			if err := fw.SetDoc(doc); err != nil {
				return fmt.Errorf("policy generation %d: %w", doc.Generation, err)
			}
			// New rules may give an address other ids: report afresh.
			known.forget()
			log.Printf("clawker-dns: policy generation %d applied (%d rules)", doc.Generation, len(doc.Rules))
			return nil
		})
	}()
	return nil
}

// reported remembers what the control plane acknowledged, so a cached
// answer (the same address, the same rule ids) is not reported on every
// query: the control plane keeps an entry TTL + its grace (30 s) after
// the report, so a repeat is needed only when that end comes near. This
// takes the report off the hot path of a cached name without ever
// letting the kernel's entry lapse while answers still hand it out.
type reported struct {
	mu      sync.Mutex
	entries map[netip.Addr]reportedEntry
}

type reportedEntry struct {
	ids   []uint32
	until time.Time // the control plane's expiry for this entry
}

// cpGrace is the control plane's grace after a TTL (actors/firewall/dns);
// reportMargin is how long before that end a repeat report goes out.
const (
	cpGrace       = 30 * time.Second
	reportMargin  = 10 * time.Second
	maxRemembered = 65536
)

func (r *reported) covers(answers []clawkerfw.Answer, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range answers {
		e, ok := r.entries[a.IP]
		if !ok || !slices.Equal(e.ids, a.RuleIDs) {
			return false
		}
		// The agent may use this answer until now+TTL: the entry must
		// outlive that by the margin.
		if now.Add(time.Duration(a.TTL)*time.Second + reportMargin).After(e.until) {
			return false
		}
	}
	return true
}

func (r *reported) remember(answers []clawkerfw.Answer, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.entries) > maxRemembered {
		clear(r.entries) // bounded: the next reports refill it
	}
	for _, a := range answers {
		r.entries[a.IP] = reportedEntry{ids: slices.Clone(a.RuleIDs), until: now.Add(time.Duration(a.TTL)*time.Second + cpGrace)}
	}
}

func (r *reported) forget() {
	r.mu.Lock()
	clear(r.entries)
	r.mu.Unlock()
}
