// Command clawker is the clawker CLI; the commands live in pkg/clawkercli.
package main

import (
	"os"

	"github.com/clawker/clawker-cp/pkg/clawkercli"
)

func main() {
	os.Exit(clawkercli.Run(clawkercli.DefaultEnv(), os.Args))
}
