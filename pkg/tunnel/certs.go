package tunnel

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// Certificate lifetimes. Leaves are renewed once a third of their life is left.
const (
	CAValidity      = 10 * 365 * 24 * time.Hour
	ServingValidity = 90 * 24 * time.Hour
	ClientValidity  = 365 * 24 * time.Hour
)

// CA is the proxy's per-installation certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM and KeyPEM are the stored form (Secret keys tls.crt and tls.key).
	CertPEM, KeyPEM []byte
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// NewCA generates a self-signed ECDSA P-256 CA valid for CAValidity.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"ks-mc"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return ParseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM)
}

// ParseCA loads a CA from PEM.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse proxy CA: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse proxy CA: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("parse proxy CA: certificate is not a CA")
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("parse proxy CA: key cannot sign")
	}
	return &CA{Cert: cert, Key: signer, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Hash is the pin agents pass as --ca-cert-hash.
func (ca *CA) Hash() string { return kubesphere.CACertHash(ca.Cert) }

// issue signs a leaf; the returned tls.Certificate's chain ends with the CA.
func (ca *CA) issue(tmpl *x509.Certificate, validity time.Duration) (tls.Certificate, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-5 * time.Minute)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, certPEM, keyPEM, nil
}

// IssueServing signs a server certificate for the given names and IPs.
func (ca *CA) IssueServing(cn string, dnsNames []string, ips []net.IP, validity time.Duration) (tls.Certificate, error) {
	c, _, _, err := ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, validity)
	return c, err
}

// IssueClient signs a client certificate and returns it as PEM (for a kubeconfig).
func (ca *CA) IssueClient(cn string, orgs []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	_, certPEM, keyPEM, err = ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, validity)
	return certPEM, keyPEM, err
}

// ClusterURI is the URI SAN that binds a client certificate to one cluster:
// "urn:ks-mc:cluster:<name>". The per-cluster listener of cluster Y refuses a certificate of the
// proxy CA that does not carry Y's URI (the kubeconfig of cluster X), while CN and O stay
// kubernetes-admin / system:masters as in Tower's kubeconfig.
func ClusterURI(cluster string) *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "ks-mc:cluster:" + cluster}
}

// IssueClusterClient signs a client certificate bound to cluster (ClusterURI) and returns it as
// PEM (for the kubeconfig written into that Cluster).
func (ca *CA) IssueClusterClient(cluster, cn string, orgs []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	_, certPEM, keyPEM, err = ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		URIs:        []*url.URL{ClusterURI(cluster)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, validity)
	return certPEM, keyPEM, err
}

// BoundToCluster reports whether cert carries cluster's URI SAN.
func BoundToCluster(cert *x509.Certificate, cluster string) bool {
	want := ClusterURI(cluster).String()
	for _, u := range cert.URIs {
		if u.String() == want {
			return true
		}
	}
	return false
}

// RenewingCert serves a leaf certificate through tls.Config.GetCertificate and reissues it
// once less than a third of its validity is left, so serving certificates rotate before expiry
// without a restart.
type RenewingCert struct {
	ca       *CA
	cn       string
	dns      []string
	ips      []net.IP
	validity time.Duration

	mu   sync.Mutex
	cert *tls.Certificate
}

// NewRenewingCert issues the first certificate.
func NewRenewingCert(ca *CA, cn string, dnsNames []string, ips []net.IP, validity time.Duration) (*RenewingCert, error) {
	r := &RenewingCert{ca: ca, cn: cn, dns: dnsNames, ips: ips, validity: validity}
	if _, err := r.Get(); err != nil {
		return nil, err
	}
	return r, nil
}

// Get returns the current certificate, renewing it when due.
func (r *RenewingCert) Get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && time.Until(r.cert.Leaf.NotAfter) > r.validity/3 {
		return r.cert, nil
	}
	c, err := r.ca.IssueServing(r.cn, r.dns, r.ips, r.validity)
	if err != nil {
		if r.cert != nil {
			return r.cert, nil
		}
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	r.cert = &c
	return r.cert, nil
}

// ServerTLS returns a server tls.Config using r; clientCAs, when set, verifies client certificates
// given by the peer.
func (r *RenewingCert) ServerTLS(clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.Get() },
		ClientCAs:      clientCAs,
		NextProtos:     []string{"http/1.1"},
	}
}
