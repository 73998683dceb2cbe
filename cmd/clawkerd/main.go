// Command clawkerd runs inside each agent container: it registers the agent
// with the control plane over mTLS and holds one long-lived Session.
package main

import (
	"fmt"
	"os"
)

func main() {
	// Registration arrives with the agent identity work; until then clawkerd
	// refuses to run rather than pretend an agent is supervised.
	fmt.Fprintln(os.Stderr, "clawkerd: registration with the control plane is not available in this build")
	os.Exit(2)
}
