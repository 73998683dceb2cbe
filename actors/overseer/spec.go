package overseer

import (
	"github.com/clawker/clawker-cp/actors/supervise"
	"github.com/clawker/clawker-cp/pkg/cpapi"
)

// Spec is how the root spawns the overseer. A restarted overseer comes back
// with an empty worldview; the Docker feed's spec republishes into it.
func Spec() supervise.Spec {
	return supervise.Spec{Name: cpapi.ActorOverseer, Producer: New()}
}
