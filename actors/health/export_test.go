package health

import (
	"net/http"

	"github.com/asynkron/protoactor-go/actor"
)

// HealthzHandler is the /healthz handler the health actor self serves on
// its port, with a cache of its own, for requests whose RemoteAddr a test
// sets: a real caller outside loopback would need a second host.
func HealthzHandler(cfg Config, sys *actor.ActorSystem, self *actor.PID) http.Handler {
	return http.HandlerFunc(newHandler(cfg, sys, self).healthz)
}
