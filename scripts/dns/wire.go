package main

import (
	"context"
	"fmt"
	"log"
	"os"

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
	fw.Reporter = clawkerfw.ReporterFunc(func(ctx context.Context, answers []clawkerfw.Answer) error {
		out := make([]stackapi.Answer, len(answers))
		for i, a := range answers {
			out[i] = stackapi.Answer{Name: a.Name, IP: a.IP, RuleIDs: a.RuleIDs, TTL: a.TTL}
		}
		return c.Report(ctx, out)
	})
	go func() {
		_ = c.WatchPolicy(context.Background(), func(doc egressrules.Doc) error {
			if err := fw.SetDoc(doc); err != nil {
				return fmt.Errorf("policy generation %d: %w", doc.Generation, err)
			}
			log.Printf("clawker-dns: policy generation %d applied (%d rules)", doc.Generation, len(doc.Rules))
			return nil
		})
	}()
	return nil
}
