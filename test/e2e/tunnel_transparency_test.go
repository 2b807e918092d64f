//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// checkTunnelTransparency LISTs a large ConfigMap set on the member's real kube-apiserver through
// the tunnel (kubeconfig tunnel) and directly (direct), over HTTP/1.1 and HTTP/2, without and with
// Accept-Encoding: gzip, and compares the raw bytes and encoding headers. The LIST is pinned to
// one resourceVersion (resourceVersionMatch=Exact), so both answers describe the same state
// whatever else the cluster writes meanwhile.
func checkTunnelTransparency(t *testing.T, member kubernetes.Interface, direct, tunnel *rest.Config) {
	ctx := context.Background()
	const ns, label = "default", "ksmc-e2e=transparency"
	value := strings.Repeat("0123456789abcdef", 100<<10/16)
	for i := range 12 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("transparency-%d", i), Labels: map[string]string{"ksmc-e2e": "transparency"}},
			Data: map[string]string{"v": fmt.Sprintf("%d-%s", i, value)}}
		if _, err := member.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = member.CoreV1().ConfigMaps(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: label})
	})
	l, err := member.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: label})
	if err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/api/v1/namespaces/%s/configmaps?labelSelector=%s&resourceVersion=%s&resourceVersionMatch=Exact", ns, label, l.ResourceVersion)
	type raw struct {
		proto      int
		enc, ctype string
		length     int64
		body       []byte
	}
	get := func(t *testing.T, cfg *rest.Config, h2 bool, ae string) raw {
		t.Helper()
		cfg = rest.CopyConfig(cfg)
		cfg.DisableCompression = true // Go adds no Accept-Encoding and decodes nothing
		if !h2 {
			cfg.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
		rt, err := rest.TransportFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodGet, strings.TrimSuffix(cfg.Host, "/")+path, nil)
		if ae != "" {
			req.Header.Set("Accept-Encoding", ae)
		}
		resp, err := (&http.Client{Transport: rt}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || resp.Uncompressed {
			t.Fatalf("LIST via %s: %d %v (uncompressed by the client: %v) %.200s", cfg.Host, resp.StatusCode, err, resp.Uncompressed, b)
		}
		return raw{resp.ProtoMajor, resp.Header.Get("Content-Encoding"), resp.Header.Get("Content-Type"), resp.ContentLength, b}
	}
	for _, h2 := range []bool{false, true} {
		for _, ae := range []string{"", "gzip"} {
			want, got := get(t, direct, h2, ae), get(t, tunnel, h2, ae)
			name := fmt.Sprintf("h2=%v Accept-Encoding=%q", h2, ae)
			if wantEnc := map[string]string{"": "", "gzip": "gzip"}[ae]; want.enc != wantEnc {
				t.Fatalf("%s: the direct answer has Content-Encoding %q: the LIST does not exercise compression", name, want.enc)
			}
			if wantProto := map[bool]int{false: 1, true: 2}[h2]; got.proto != wantProto || want.proto != wantProto {
				t.Fatalf("%s: protocols tunnel %d, direct %d", name, got.proto, want.proto)
			}
			if got.enc != want.enc || got.ctype != want.ctype || got.length != want.length {
				t.Errorf("%s: tunnel Content-Encoding %q Content-Type %q length %d, direct %q %q %d", name, got.enc, got.ctype, got.length, want.enc, want.ctype, want.length)
			}
			if !bytes.Equal(got.body, want.body) {
				t.Errorf("%s: tunnel body (%d bytes) differs from the direct one (%d bytes)", name, len(got.body), len(want.body))
			}
			t.Logf("%s: %d bytes, Content-Encoding %q, identical", name, len(got.body), got.enc)
		}
	}
}
