package tunnel

import "github.com/ks-mc/ks-mc/pkg/kubesphere"

// maxAgentIDLength caps X-Ksmc-Agent-Id (16 hex digits from ks-mc agents).
const maxAgentIDLength = 32

// validClusterName reports whether s is a DNS-1123 label of at most MaxClusterNameLength
// characters: lowercase letters, digits and '-', starting and ending with a letter or digit. The
// proxy checks it before the name is used in any way (rate-limiter key, log, lookup).
func validClusterName(s string) bool {
	if len(s) == 0 || len(s) > kubesphere.MaxClusterNameLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// sanitizeAgentID returns id when it is short and made of [A-Za-z0-9._-] only, else "invalid":
// the agent id is only logged, and logs never echo unbounded or unvalidated values.
func sanitizeAgentID(id string) string {
	if len(id) == 0 {
		return "none"
	}
	if len(id) > maxAgentIDLength {
		return "invalid"
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "invalid"
		}
	}
	return id
}
