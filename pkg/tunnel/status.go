package tunnel

import (
	"encoding/json"
	"errors"
	"net/http"
)

var errorsIs = errors.Is

func statusText(code int) string { return http.StatusText(code) }

// statusJSON renders a metav1.Status, which kubectl prints as "error: <message>".
// tokenStreamAdvice answers a request that reached a kube listener with neither a client
// certificate of the proxy CA nor a bearer token (every path of the agent says the same).
const tokenStreamAdvice = "ks-mc proxy: present a client certificate issued by the proxy CA (the kubeconfig in the Cluster's spec.connection) or a bearer token"

func statusJSON(code int, reason, msg string) []byte {
	b, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": reason, "code": code,
	})
	return b
}

func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(statusJSON(code, reason, msg))
}
