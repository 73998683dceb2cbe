// Command clawker is the clawker CLI; the commands live in pkg/clawkercli.
package main

import (
	"os"

	"github.com/clawker/clawker-cp/pkg/clawkercli"
)

// version is the release, set when building one:
// go build -ldflags "-X main.version=v0.4.0" ./cmd/clawker
var version = "dev"

func main() {
	clawkercli.Version = version
	os.Exit(clawkercli.Run(clawkercli.DefaultEnv(), os.Args))
}
