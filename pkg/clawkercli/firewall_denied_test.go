package clawkercli

import (
	"bytes"
	"testing"
	"time"
)

func TestWriteDenied(t *testing.T) {
	var b bytes.Buffer
	last := time.Date(2026, 12, 3, 8, 1, 2, 0, time.UTC)
	err := writeDenied(&b, []DeniedReport{
		{Where: "dns", Name: "registry.npmjs.org", Count: 12, Agents: []string{"myapp/dev"}, Last: last, Allow: "clawker firewall add registry.npmjs.org"},
		{Where: "proxy", Proto: "http", Name: "example.com", Count: 1, Agents: []string{"myapp/dev", "172.22.0.9"}, Last: last, Allow: "clawker firewall add example.com --proto http"},
	}, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := "NAME                WHERE       COUNT  AGENTS                LAST                  ALLOW WITH\n" +
		"registry.npmjs.org  dns         12     myapp/dev             2026-12-03T08:01:02Z  clawker firewall add registry.npmjs.org\n" +
		"example.com         proxy/http  1      myapp/dev,172.22.0.9  2026-12-03T08:01:02Z  clawker firewall add example.com --proto http\n"
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := writeDenied(&b, nil, 10*time.Minute); err != nil || b.String() != "Nothing refused in the last 10m0s.\n" {
		t.Fatalf("empty: %q %v", b.String(), err)
	}
}
