package clawkerfw

import (
	"fmt"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

func init() {
	plugin.Register(pluginName, setup)
	// The server refuses non-IN classes unless a plugin asks for them; the
	// health probe is class CH. (forward asks too; we must not depend on it.)
	dnsserver.EnableChaos[pluginName] = struct{}{}
}

// setup parses `clawkerfw NAME`: NAME is a Firewall the main has Registered.
func setup(c *caddy.Controller) error {
	c.Next() // the directive
	if !c.NextArg() {
		return plugin.Error(pluginName, c.ArgErr())
	}
	name := c.Val()
	if c.NextArg() || c.NextBlock() {
		return plugin.Error(pluginName, c.ArgErr())
	}
	fw := lookup(name)
	if fw == nil {
		return plugin.Error(pluginName, fmt.Errorf("no Firewall registered as %q", name))
	}
	if fw.Reporter == nil {
		// Refuse to start rather than answer A records nobody is told about.
		return plugin.Error(pluginName, fmt.Errorf("firewall %q has no Reporter", name))
	}
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		return &handler{fw: fw, next: next}
	})
	return nil
}
