package installer

import "strings"

// agentLogKind is what an agent's recent log lines say about a tunnel that is not up: the one
// classifier of agent logs, for join's timeout (likelyCause) and diagnose (agentLogCause).
type agentLogKind int

const (
	logNothing        agentLogKind = iota
	logTokenRejected               // the proxy rejects the agent's token (401)
	logUnknownCluster              // the proxy serves no Cluster of the agent's --name
	logCertificate                 // the proxy's certificate does not match the pinned CA
	logHandshake                   // what answers is not the proxy, or the Upgrade header is dropped
	logDNS                         // the proxy address's host name does not resolve
	logDial                        // the proxy address is not reachable
)

// classifyAgentLogs names the first kind of failure, in this order, that the logs show.
func classifyAgentLogs(logs string) agentLogKind {
	l := strings.ToLower(logs)
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(l, s) {
				return true
			}
		}
		return false
	}
	switch {
	case has("token rejected", "unauthorized", " 401", "(401)", "too many failed attempts"):
		return logTokenRejected
	case has("unknown cluster"):
		return logUnknownCluster
	case has("ca-cert-hash", "x509", "certificate"):
		return logCertificate
	case has("bad handshake", "handshake failed", "upgrade"):
		return logHandshake
	case has("no such host", "server misbehaving"):
		return logDNS
	case has("connection refused", "i/o timeout", "no route to host", "network is unreachable", "dial proxy", "deadline exceeded"):
		return logDial
	}
	return logNothing
}

// agentLogCause is diagnose's reading of the agent's recent logs: the likeliest cause of a dead
// tunnel and the check whose evidence it belongs to ("" when the logs say nothing known).
func agentLogCause(logs string) (cause, see string) {
	switch classifyAgentLogs(logs) {
	case logTokenRejected:
		return "the proxy rejects the agent's token (unauthorized)", CheckMemberAgent
	case logUnknownCluster:
		return "the proxy does not know the cluster (unknown cluster): no served Cluster of the agent's --name on the host", CheckMemberAgent
	case logCertificate:
		return "the proxy's certificate does not match the agent's pinned CA (--ca-cert-hash)", CheckMemberAgent
	case logHandshake:
		return "bad handshake: what answers at the proxy address is not the proxy (wrong port?) or an L7 proxy drops the Upgrade header", CheckHostAddress
	case logDNS:
		return "DNS: the proxy address's host name does not resolve on the member", CheckHostAddress
	case logDial:
		return "dial error: the proxy address is not reachable from the member", CheckHostAddress
	}
	return "", ""
}
