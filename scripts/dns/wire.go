package main

import "github.com/clawker/clawker-cp/scripts/dns/clawkerfw"

// wireControlPlane is THE hook where the control plane gets wired, after the
// flags are parsed and before CoreDNS starts:
//
//   - the Reporter: set fw.Reporter to the mTLS client that hands answers to
//     the eBPF owner and returns once the datapath has them (its error makes
//     the agent's query SERVFAIL). Leave it nil and the binary refuses to
//     start unless --no-report was given.
//   - the policy watcher: start it here (a goroutine) and call
//     fw.SetPolicy or fw.SetDoc for every new generation; until the first,
//     every query but the health probe is REFUSED.
//
// fw.ReportTimeout already holds --report-timeout.
func wireControlPlane(fw *clawkerfw.Firewall, o *options) error {
	_, _ = fw, o
	return nil
}
