package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// TowerConfig is the payload of a Tower agent's "config" global request (kubesphere/tower v0.2.1
// pkg/agent/config.go): JSON with Go's default field names, the []byte fields base64.
type TowerConfig struct {
	Version           string
	Name              string
	Token             string
	KubernetesSvcHost string
	KubeSphereSvcHost string
	CertData          []byte `json:",omitempty"`
	KeyData           []byte `json:",omitempty"`
	CAData            []byte `json:",omitempty"`
	BearerToken       []byte `json:",omitempty"`
}

// errTowerConfig is a config payload the proxy cannot use; its text goes back to the agent.
var errTowerConfig = errors.New("invalid json config")

// parseTowerConfig decodes a config payload (at most maxTowerConfig bytes). It checks the shape
// only; credentials and targets are checked by validateTowerTargets after authentication.
func parseTowerConfig(b []byte) (*TowerConfig, error) {
	if len(b) == 0 || len(b) > maxTowerConfig {
		return nil, errTowerConfig
	}
	c := &TowerConfig{}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, errTowerConfig
	}
	return c, nil
}

// maxTargetLength bounds a target host:port (a DNS name is at most 253 characters).
const maxTargetLength = 261

// towerTarget checks a host:port the agent will dial for the proxy; a missing port becomes the
// scheme's default (Tower's agent would fail to dial it: ks-mc serves it).
func towerTarget(hostport, defaultPort string) (string, error) {
	if hostport == "" || len(hostport) > maxTargetLength {
		return "", fmt.Errorf("target must be host:port")
	}
	for i := 0; i < len(hostport); i++ {
		if c := hostport[i]; c <= ' ' || c >= 0x7f || c == '/' || c == '@' || c == '?' || c == '#' {
			return "", fmt.Errorf("target must be host:port")
		}
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		if strings.Count(hostport, ":") > 0 && !strings.HasPrefix(hostport, "[") {
			return "", fmt.Errorf("target must be host:port")
		}
		host, port = strings.Trim(hostport, "[]"), defaultPort
	}
	if host == "" {
		return "", fmt.Errorf("target must be host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("target port must be 1-65535")
	}
	return net.JoinHostPort(host, port), nil
}

// towerTargets is what an admitted Tower agent serves: the two addresses it was configured with and
// how the proxy speaks to its kube-apiserver.
type towerTargets struct {
	kube, ks string // host:port the agent dials
	roots    *x509.CertPool
	cert     *tls.Certificate
	bearer   string
	hasCert  bool
}

// validateTowerTargets checks an authenticated agent's targets and credentials.
func validateTowerTargets(c *TowerConfig) (*towerTargets, error) {
	t := &towerTargets{}
	var err error
	if t.kube, err = towerTarget(c.KubernetesSvcHost, "443"); err != nil {
		return nil, fmt.Errorf("invalid config: KubernetesSvcHost: %v", err)
	}
	if t.ks, err = towerTarget(c.KubeSphereSvcHost, "80"); err != nil {
		return nil, fmt.Errorf("invalid config: KubeSphereSvcHost: %v", err)
	}
	if len(c.CAData) > 0 {
		t.roots = x509.NewCertPool()
		if !t.roots.AppendCertsFromPEM(c.CAData) {
			return nil, fmt.Errorf("invalid config: CAData holds no PEM certificate")
		}
	}
	switch {
	case len(c.CertData) > 0 && len(c.KeyData) > 0:
		kp, err := tls.X509KeyPair(c.CertData, c.KeyData)
		if err != nil {
			return nil, fmt.Errorf("invalid config: client certificate and key do not form a pair")
		}
		t.cert, t.hasCert = &kp, true
	case len(c.CertData) > 0 || len(c.KeyData) > 0:
		return nil, fmt.Errorf("invalid config: CertData and KeyData go together")
	}
	if len(c.BearerToken) > 0 {
		tok := strings.TrimSpace(string(c.BearerToken))
		if len(tok) > 16<<10 {
			return nil, fmt.Errorf("invalid config: BearerToken too long")
		}
		for i := 0; i < len(tok); i++ {
			if tok[i] < 0x21 || tok[i] > 0x7e {
				return nil, fmt.Errorf("invalid config: BearerToken is not a token")
			}
		}
		t.bearer = tok
	}
	return t, nil
}
