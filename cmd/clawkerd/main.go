// Command clawkerd runs as PID 1 inside each agent container: it registers
// the agent with the control plane over mTLS, holds one long-lived Session,
// runs the commands the control plane sends, and runs the user's command
// (the arguments after the flags). See `clawkerd --help`; the logic lives
// in pkg/agentd.
package main

import (
	"os"

	"github.com/clawker/clawker-cp/pkg/agentd"
)

func main() {
	os.Exit(agentd.Main(os.Args[1:]))
}
