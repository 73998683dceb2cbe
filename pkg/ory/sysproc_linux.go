package ory

import "syscall"

// sysProcAttr puts a server in its own process group (a terminal's Ctrl-C
// reaches the control plane, which stops the servers in order, not the
// servers directly) and has the kernel kill it if the control plane dies
// without stopping it, so no orphan keeps the ports.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
