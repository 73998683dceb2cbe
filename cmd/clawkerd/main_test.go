package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func goTool(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	return gobin
}

// TestClawkerdExitCodes runs the real binary: --help exits 0, a missing
// setting exits 2 with a JSON log line naming the flag and its variable.
func TestClawkerdExitCodes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "clawkerd")
	build := exec.Command(goTool(t), "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	help := exec.Command(bin, "--help")
	out, err := help.Output()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--cp-addr", "CLAWKERD_CP_ADDR", "--server-name", "Exit codes"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("--help lacks %q", want)
		}
	}

	run := exec.Command(bin)
	run.Env = []string{"PATH=" + os.Getenv("PATH")} // no CLAWKERD_* settings
	var stderr bytes.Buffer
	run.Stderr = &stderr
	err = run.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("without settings: %v, want exit code 2", err)
	}
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(stderr.Bytes()), &line); err != nil {
		t.Fatalf("stderr is not one JSON line: %q", stderr.String())
	}
	if line["event"] != "config_invalid" || !strings.Contains(line["error"].(string), "--cp-addr") ||
		!strings.Contains(line["error"].(string), "CLAWKERD_CP_ADDR") {
		t.Errorf("log line = %v", line)
	}
}
