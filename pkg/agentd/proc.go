package agentd

import (
	"os/exec"
	"sync"
)

// procTable tracks the children clawkerd starts with os/exec (the user's
// command and init steps).
//
// Why it exists: as PID 1, clawkerd inherits every orphan in the container
// and must reap them, but a blind wait4(-1) would also reap its own
// children and steal the exit status their exec.Cmd.Wait is about to
// collect (Wait then fails with ECHILD and the exit code is lost). So the
// reaper (reaper_linux.go) only ever reaps pids that are NOT in this table,
// and it first peeks at an exited child with waitid(WNOWAIT), which leaves
// the zombie in place. Tracked children are reaped by their own Wait.
//
// Two races are closed here:
//   - A child can exit before Start returns. Start and the insertion into
//     the table happen under startMu held shared, and a reap pass holds it
//     exclusively, so a pass never sees a zombie we started but have not
//     recorded yet.
//   - The peek returns only the first exited child. If that is one of ours
//     the pass stops (reaping anything behind it would need it to be gone),
//     and wait() asks for another pass once Wait has collected it, so
//     orphans queued behind one of our children are reaped right after.
type procTable struct {
	startMu sync.RWMutex

	mu   sync.Mutex
	pids map[int]struct{}

	// kick asks the reaper for a pass; nil without a reaper. Set before
	// anything is started.
	kick func()
}

func newProcTable() *procTable { return &procTable{pids: map[int]struct{}{}} }

// start starts cmd and records its pid before any reap pass can look.
func (p *procTable) start(cmd *exec.Cmd) error {
	p.startMu.RLock()
	defer p.startMu.RUnlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	p.mu.Lock()
	p.pids[cmd.Process.Pid] = struct{}{}
	p.mu.Unlock()
	return nil
}

// wait is cmd.Wait, then forgets the pid and lets the reaper catch up.
func (p *procTable) wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	p.mu.Lock()
	delete(p.pids, cmd.Process.Pid)
	p.mu.Unlock()
	if p.kick != nil {
		p.kick()
	}
	return err
}

func (p *procTable) tracked(pid int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.pids[pid]
	return ok
}
