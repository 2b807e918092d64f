package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// ParseCACertHash normalises and checks a "sha256:<64 hex>" pin.
func ParseCACertHash(s string) (string, error) {
	h, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:")
	if !ok || len(h) != 64 {
		return "", fmt.Errorf("%w: --ca-cert-hash must be sha256:<64 hex digits>", ErrInvalidConfig)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", fmt.Errorf("%w: --ca-cert-hash must be sha256:<64 hex digits>", ErrInvalidConfig)
	}
	return "sha256:" + h, nil
}

// pinnedTLSConfig trusts exactly the CA whose SPKI hashes to pin, found in the chain the proxy
// presents. The host name is not checked: the pin, not a public name, identifies the installation
// (proxies are published on IPs, load balancer names and NodePorts alike).
func pinnedTLSConfig(pin, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         serverName,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate below
		NextProtos:         []string{"http/1.1"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPinned(raw, pin)
		},
	}
}

func verifyPinned(raw [][]byte, pin string) error {
	if len(raw) == 0 {
		return fmt.Errorf("%w: the proxy presented no certificate", ErrCAHashMismatch)
	}
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("x509: parse proxy certificate: %w", err)
		}
		certs = append(certs, c)
	}
	var ca *x509.Certificate
	var seen []string
	for _, c := range certs {
		h := kubesphere.CACertHash(c)
		if c.IsCA {
			seen = append(seen, h)
		}
		if c.IsCA && h == pin {
			ca = c
		}
	}
	if ca == nil {
		return fmt.Errorf("%w: --ca-cert-hash is %s but the proxy's chain holds CA(s) %v: is the agent pointed at the right proxy, and was the hash taken from its current CA?",
			ErrCAHashMismatch, pin, seen)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%w: %v", ErrCAHashMismatch, err)
	}
	return nil
}
