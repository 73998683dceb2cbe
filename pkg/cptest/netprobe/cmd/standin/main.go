// Command standin stands in for a firewall stack member in container-level
// tests (see netprobe.StandinConfig): it answers TCP and UDP with the line
// "standin <name> <port>", DNS A queries with a fixed address, and prints
// one JSON line (netprobe.Record) per connection, datagram or query. It
// serves until SIGTERM or SIGINT.
//
//	standin -name proxy -tcp 15001,15443
//	standin -name dns -dns-port 53 [-dns-answer 198.51.100.53] [-dns-record name=ip]...
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
	code := netprobe.StandinMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
