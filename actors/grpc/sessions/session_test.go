package sessions

import (
	"bytes"
	"testing"
)

// A command's output is kept up to MaxCommandOutput per stream, whatever
// the agent sends after, and the cut is reported once reached.
func TestAppendCapped(t *testing.T) {
	var buf []byte
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	fits := 0
	for range 2 * MaxCommandOutput / len(chunk) {
		if appendCapped(&buf, chunk) {
			fits++
		}
	}
	if len(buf) != MaxCommandOutput {
		t.Fatalf("kept %d bytes, want the cap %d", len(buf), MaxCommandOutput)
	}
	if want := MaxCommandOutput / len(chunk); fits != want {
		t.Errorf("%d chunks fit, want %d", fits, want)
	}
	if !appendCapped(&buf, nil) {
		t.Error("an empty chunk at the cap: reported as cut")
	}
	var small []byte
	if !appendCapped(&small, []byte("ok")) || string(small) != "ok" {
		t.Errorf("a small write: %q", small)
	}
	part := bytes.Repeat([]byte("y"), MaxCommandOutput-1)
	if appendCapped(&part, []byte("ab")) || len(part) != MaxCommandOutput || part[len(part)-1] != 'a' {
		t.Errorf("a write across the cap: len %d", len(part))
	}
}
