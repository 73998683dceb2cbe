package agentdb

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Environment of the crash-test child process.
const (
	crashDBEnv    = "AGENTDB_CRASH_HELPER_DB"
	crashRoundEnv = "AGENTDB_CRASH_HELPER_ROUND"
)

// TestHelperProcess is not a real test: TestCrashDurability re-executes the
// test binary to run it as a child. It registers agents in a loop and prints
// each key on stdout only after Register has returned, i.e. once the
// registration is acknowledged. It stops by itself after a bounded time in
// case the parent never kills it.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(crashDBEnv)
	if path == "" {
		t.Skip("helper process for TestCrashDurability")
	}
	round := os.Getenv(crashRoundEnv)
	ctx := context.Background()
	d, err := Open(ctx, path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: open:", err)
		os.Exit(2)
	}
	deadline := time.Now().Add(60 * time.Second)
	var recent []string
	for i := 0; i < 1_000_000 && time.Now().Before(deadline); i++ {
		name := fmt.Sprintf("crash-%s-%06d", round, i)
		a, _, err := d.Register(ctx, newAgent("crash", name, name, name, time.Now()))
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper: register:", err)
			os.Exit(3)
		}
		// One write(2) per line, so a kill cannot split a line that was
		// already handed to the kernel.
		if _, err := os.Stdout.WriteString(a.Key + "\n"); err != nil {
			os.Exit(4)
		}
		// Interleave batched last-seen updates so the WAL holds a mix of
		// inserts and updates when the kill lands.
		recent = append(recent, a.Key)
		if len(recent) == 8 {
			batch := make(map[string]time.Time, len(recent))
			for _, k := range recent {
				batch[k] = time.Now()
			}
			if err := d.TouchLastSeen(ctx, batch); err != nil {
				fmt.Fprintln(os.Stderr, "helper: touch:", err)
				os.Exit(5)
			}
			recent = recent[:0]
		}
	}
	os.Exit(0)
}

// TestCrashDurability SIGKILLs a writer mid-stream, several times over the
// same file, and checks after each kill that the database is intact and
// holds every registration the child acknowledged.
func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	path := filepath.Join(t.TempDir(), "agents.db")
	var acked []string
	for round := range 3 {
		keys := crashRound(t, path, round, 40+round*30)
		t.Logf("round %d: %d acknowledged registrations before SIGKILL", round, len(keys))
		acked = append(acked, keys...)

		ctx := context.Background()
		d, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		if err := d.IntegrityCheck(ctx); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, k := range acked {
			if _, err := d.Get(ctx, k); err != nil {
				t.Fatalf("round %d: acknowledged key %s lost: %v", round, k[:12], err)
			}
		}
		all, err := d.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) < len(acked) {
			t.Fatalf("round %d: List has %d rows, fewer than %d acknowledged", round, len(all), len(acked))
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// crashRound runs one child against path, waits for at least minLines
// acknowledged keys, SIGKILLs it and returns every complete key it printed.
func crashRound(t *testing.T, path string, round, minLines int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDBEnv+"="+path, crashRoundEnv+"="+strconv.Itoa(round))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()

	var keys []string
	timeout := time.After(60 * time.Second)
	for len(keys) < minLines {
		select {
		case l, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("child exited after %d keys: %v", len(keys), cmd.ProcessState)
			}
			keys = append(keys, l)
		case <-timeout:
			t.Fatalf("child printed only %d keys in 60s", len(keys))
		}
	}
	// Kill while the child is in the middle of its loop.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	// Everything the child printed before dying was acknowledged; drain it.
	for l := range lines {
		keys = append(keys, l)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
	// A line cut short by the kill was never fully reported: drop it.
	if n := len(keys); n > 0 && len(keys[n-1]) != 64 {
		keys = keys[:n-1]
	}
	for _, k := range keys {
		if len(k) != 64 {
			t.Fatalf("malformed key line %q", k)
		}
	}
	return keys
}
