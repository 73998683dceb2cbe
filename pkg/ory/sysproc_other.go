//go:build !linux

package ory

import "syscall"

// sysProcAttr: the servers only run in the control plane's Linux container;
// elsewhere (a developer's build) they get no special attributes.
func sysProcAttr() *syscall.SysProcAttr { return nil }
