package kubesphere

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"regexp"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The GVRs are assignable to schema.GroupVersionResource without a conversion (the package itself
// imports no Kubernetes module; this test may).
var _ schema.GroupVersionResource = ClusterGVR
var _ schema.GroupVersionResource = ClusterConfigurationGVR

func TestClusterConfigurationAPIVersion(t *testing.T) {
	if got := schema.GroupVersionResource(ClusterConfigurationGVR).GroupVersion().String(); got != ClusterConfigurationAPIVersion {
		t.Fatalf("ClusterConfigurationAPIVersion = %q, GVR says %q", ClusterConfigurationAPIVersion, got)
	}
}

func TestParseTunnel(t *testing.T) {
	for in, want := range map[string]Tunnel{"": TunnelAuto, "auto": TunnelAuto, " Tower ": TunnelTower, "ks-mc": TunnelKsMc, "ksmc": TunnelKsMc} {
		if got, err := ParseTunnel(in); err != nil || got != want {
			t.Errorf("ParseTunnel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseTunnel("wireguard"); err == nil {
		t.Error("ParseTunnel(wireguard) accepted")
	}
}

func TestCACertHash(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<31, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if h := CACertHash(cert); !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(h) {
		t.Fatalf("CACertHash = %q", h)
	}
}

func TestHeartbeatLeaseName(t *testing.T) {
	if got := HeartbeatLeaseName("member1"); got != "ks-mc-tunnel-member1" {
		t.Fatalf("HeartbeatLeaseName = %q", got)
	}
}
