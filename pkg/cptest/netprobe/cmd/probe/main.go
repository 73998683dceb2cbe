// Command probe makes network attempts from inside a test container and
// prints one JSON line (netprobe.Outcome) per attempt, then a "done" line.
// Failed attempts are outcomes, not exit codes: it exits 2 only for bad
// arguments.
//
//	probe [flags] ATTEMPT...
//
//	-timeout 2s      bound of each attempt (an attempt's timeout= wins)
//	-loop            repeat the attempts until SIGTERM/SIGINT, -count
//	                 rounds, -for elapsed, or the -stop-file exists
//	-interval 20ms   pause between rounds
//	-hold            after the attempts, wait for SIGTERM (a container to
//	                 exec more probes in)
//
// Attempts (see netprobe.Attempt for every option):
//
//	tcp:10.213.7.200:15001            connect, send a line, read one back
//	tcp:[::ffff:10.213.7.200]:15001   the same from an AF_INET6 socket
//	udp:10.213.7.201:53,send=hi       sendto, wait for a reply (,connect)
//	dns:10.213.7.201                  A query over UDP (name=, type=)
//	dnstcp:10.213.7.201               the same over TCP
//	socket:raw                        create a socket (raw, ping, packet...)
//	tcp:10.213.7.200:15001,uid=1000   the attempt as another uid
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/clawker/clawker-cp/pkg/cptest/netprobe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := netprobe.ProbeMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
