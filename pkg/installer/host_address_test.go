package installer

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestValidateProxyAddress(t *testing.T) {
	ok := map[string]string{
		"http://203.0.113.10:30881":      "http://203.0.113.10:30881",
		" HTTP://Proxy.Example.com:80/":  "http://proxy.example.com:80",
		"https://10.0.0.1:443":           "https://10.0.0.1:443",
		"http://[2001:db8::1]:8080":      "http://[2001:db8::1]:8080",
		"http://127.100.1.1:8080":        "http://127.100.1.1:8080",
		"http://tower.example.com.:8080": "http://tower.example.com.:8080",
	}
	for in, want := range ok {
		got, err := ValidateProxyAddress(in)
		if err != nil || got != want {
			t.Errorf("ValidateProxyAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                               "empty",
		"203.0.113.10:30881":             "no scheme",
		"ws://203.0.113.10:30881":        "scheme must be http or https",
		"http://203.0.113.10":            "no port",
		"http://:8080":                   "no host",
		"http://203.0.113.10:0":          "not in 1-65535",
		"http://203.0.113.10:70000":      "not in 1-65535",
		"http://203.0.113.10:http":       "",
		"http://0.0.0.0:8080":            "not an address agents can dial",
		"http://203.0.113.10:8080/proxy": "without a path",
		"http://203.0.113.10:8080/?a=b":  "without a path",
		"http://user:pw@203.0.113.10:80": "user information",
		"http://bad_host!:8080":          "",
		"http://exa mple.com:8080":       "",
	}
	for in, frag := range bad {
		_, err := ValidateProxyAddress(in)
		if err == nil {
			t.Errorf("ValidateProxyAddress(%q): no error", in)
			continue
		}
		if frag != "" && !strings.Contains(err.Error(), frag) {
			t.Errorf("ValidateProxyAddress(%q) = %v, want it to mention %q", in, err, frag)
		}
	}
}

func TestLoadBalancerAddress(t *testing.T) {
	if got := LoadBalancerAddress(towerService("")); got != "" {
		t.Errorf("pending = %q", got)
	}
	if got := LoadBalancerAddress(towerService("198.51.100.7")); got != "http://198.51.100.7:8080" {
		t.Errorf("ip = %q", got)
	}
	s := towerService("")
	s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "lb.example.com"}, {IP: "198.51.100.8"}}
	if got := LoadBalancerAddress(s); got != "http://198.51.100.8:8080" {
		t.Errorf("ip preferred over hostname: %q", got)
	}
	s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "lb.example.com"}}
	if got := LoadBalancerAddress(s); got != "http://lb.example.com:8080" {
		t.Errorf("hostname = %q", got)
	}
	if LoadBalancerAddress(nil) != "" {
		t.Error("nil service")
	}
}

func TestComputeCandidates(t *testing.T) {
	svc := towerService("")
	svc.Spec.ExternalIPs = []string{"192.0.2.50"}
	nodes := []corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "10.0.0.2"}, {Type: corev1.NodeExternalIP, Address: "203.0.113.2"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: "node-a"}, {Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeExternalIP, Address: "203.0.113.1"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "node-c"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}}}}, // duplicate address
	}
	got := ComputeCandidates(svc, nodes)
	want := []string{
		"http://192.0.2.50:8080",
		"http://203.0.113.1:31234", "http://203.0.113.2:31234",
		"http://10.0.0.1:31234", "http://10.0.0.2:31234",
	}
	if len(got) != len(want) {
		t.Fatalf("candidates %v, want %v", got, want)
	}
	for i := range want {
		if got[i].Address != want[i] {
			t.Errorf("candidate %d = %s, want %s", i, got[i].Address, want[i])
		}
		if _, err := ValidateProxyAddress(got[i].Address); err != nil {
			t.Errorf("candidate %s invalid: %v", got[i].Address, err)
		}
	}
	if got[1].Source != "node node-a ExternalIP, NodePort 31234" {
		t.Errorf("source %q", got[1].Source)
	}
	// No NodePort (ClusterIP Service): only external IPs.
	svc.Spec.Ports[0].NodePort = 0
	if got := ComputeCandidates(svc, nodes); len(got) != 1 {
		t.Errorf("without NodePort: %v", got)
	}
	if got := ComputeCandidates(nil, nodes); got != nil {
		t.Errorf("nil service: %v", got)
	}
	v6 := towerService("")
	v6.Spec.ExternalIPs = []string{"2001:db8::5"}
	if got := ComputeCandidates(v6, nil); len(got) != 1 || got[0].Address != "http://[2001:db8::5]:8080" {
		t.Errorf("IPv6: %v", got)
	}
}

func TestCheckProxyHealth(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" && r.URL.RawQuery == "" {
			_, _ = w.Write([]byte("OK\n"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	if err := CheckProxyHealth(context.Background(), srv.URL, time.Second); err != nil {
		t.Errorf("healthy proxy: %v", err)
	}
	bad := httptest.NewServer(http.NotFoundHandler())
	defer bad.Close()
	if err := CheckProxyHealth(context.Background(), bad.URL, time.Second); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("404 proxy: %v", err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := "http://" + l.Addr().String()
	l.Close()
	if err := CheckProxyHealth(context.Background(), addr, time.Second); err == nil {
		t.Error("closed port: no error")
	}
}
