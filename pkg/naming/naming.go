// Package naming holds the naming rules of what clawker identifies agents
// by: project and agent names, and Docker container ids. They are checked
// in several places (the agent certificate, clawkerd's configuration, the
// BPF loader's cgroup lookup); the rules live here, once.
//
// It imports nothing but the standard library, so every layer (clawkerd
// included) can use it.
package naming

// The rules, as the error messages quote them.
const (
	// ProjectRule: dots are allowed (a project may be named after a
	// domain).
	ProjectRule = "[a-z0-9][a-z0-9_.-]{0,62}"
	// AgentRule: no dots, so a name built as <project>.<agent> splits at
	// its last dot without ambiguity.
	AgentRule = "[a-z0-9][a-z0-9_-]{0,62}"
	// ContainerIDLen is the length of a full Docker container id, in
	// lowercase hex digits.
	ContainerIDLen = 64
)

// ValidProject reports whether s is a project name (ProjectRule).
func ValidProject(s string) bool { return validName(s, true) }

// ValidAgent reports whether s is an agent name (AgentRule). clawkerd's
// MCP server names follow the same rule.
func ValidAgent(s string) bool { return validName(s, false) }

func validName(s string, allowDot bool) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '_' || c == '-' || allowDot && c == '.'):
		default:
			return false
		}
	}
	return true
}

// ValidContainerID reports whether s is a full Docker container id:
// exactly ContainerIDLen lowercase hex digits (a short or upper-case id is
// not).
func ValidContainerID(s string) bool {
	if len(s) != ContainerIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
