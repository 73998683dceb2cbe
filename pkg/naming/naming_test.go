package naming

import (
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	for _, c := range []struct {
		s              string
		project, agent bool
	}{
		{"dev", true, true},
		{"my-app_2", true, true},
		{"example.com", true, false},
		{"", false, false},
		{"-dev", false, false},
		{".dev", false, false},
		{"Dev", false, false},
		{"dev/x", false, false},
		{strings.Repeat("a", 63), true, true},
		{strings.Repeat("a", 64), false, false},
	} {
		if got := ValidProject(c.s); got != c.project {
			t.Errorf("ValidProject(%q) = %v", c.s, got)
		}
		if got := ValidAgent(c.s); got != c.agent {
			t.Errorf("ValidAgent(%q) = %v", c.s, got)
		}
	}
}

func TestContainerID(t *testing.T) {
	full := strings.Repeat("0123456789abcdef", 4)
	for _, c := range []struct {
		s  string
		ok bool
	}{
		{full, true},
		{full[:12], false},
		{full + "0", false},
		{strings.ToUpper(full), false},
		{full[:63] + "g", false},
		{"", false},
	} {
		if got := ValidContainerID(c.s); got != c.ok {
			t.Errorf("ValidContainerID(%q) = %v", c.s, got)
		}
	}
}
