package settings

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestFirewallUpstreamCA(t *testing.T) {
	if Default().Firewall.UpstreamCA != "" {
		t.Fatal("firewall.upstream_ca must default to empty (the system roots alone)")
	}
	file := writeTestCA(t)
	pemText, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{file, string(pemText)} {
		s, err := parse([]byte("firewall:\n  upstream_ca: " + strconv.Quote(v) + "\n"))
		if err != nil {
			t.Fatalf("upstream_ca %.40q: %v", v, err)
		}
		got, err := UpstreamCAPEM(s.Firewall.UpstreamCA)
		if err != nil || string(got) != string(pemText) {
			t.Fatalf("UpstreamCAPEM(%.40q) = %.40q, %v", v, got, err)
		}
	}
	for _, c := range []struct{ yaml, want string }{
		{"firewall:\n  upstream_ca: /nonexistent/ca.pem\n", "cannot read /nonexistent/ca.pem"},
		{"firewall:\n  upstream_ca: \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"\n", "firewall.upstream_ca:"},
		{"firewall:\n  upstream_ca: \"-----BEGIN NOTHING-----\\n\"\n", "no PEM certificate"},
	} {
		_, err := parse([]byte(c.yaml))
		var e *Error
		if !errors.As(err, &e) || e.Key != "firewall.upstream_ca" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v (key %q), want key firewall.upstream_ca and %q", c.yaml, err, keyOf(e), c.want)
		}
	}
}
