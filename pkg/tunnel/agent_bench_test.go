package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

// fixedUpstream answers every request with the same small JSON (what a namespace GET returns),
// in memory: BenchmarkAgentServeGET measures the agent's own work per request.
type fixedUpstream struct{ body []byte }

func (f fixedUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
	}
	return &http.Response{StatusCode: 200, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: r,
		Header: http.Header{"Content-Type": {"application/json"}, "Audit-Id": {"0b3c5ad2-6f6e-4c1d-9d62-4b8f0a6f7e10"},
			"Date": {"Tue, 01 Dec 2026 12:00:00 GMT"}, "X-Kubernetes-Pf-Flowschema-Uid": {"f1"}, "X-Kubernetes-Pf-Prioritylevel-Uid": {"p1"}},
		ContentLength: int64(len(f.body)), Body: io.NopCloser(bytes.NewReader(f.body))}, nil
}

// BenchmarkAgentServeGET: one small GET on a kept-alive stream (net.Pipe) through the agent's
// stream server to an in-memory upstream ("own"), and through what the agent used before
// ("nethttp": a net/http.Server connection per stream and httputil.ReverseProxy, as the Tower
// sessions' forwarder still does).
func BenchmarkAgentServeGET(b *testing.B) {
	up := fixedUpstream{body: []byte(`{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default"}}`)}
	target := &url.URL{Scheme: "https", Host: "10.96.0.1:443"}
	kube := upstream{name: "kube-apiserver", target: target, rt: up}
	h := StreamHeader{Target: TargetKubernetes, Auth: AuthToken}
	b.Run("own", func(b *testing.B) {
		s := newAgentServer(kube, kube, 10*time.Second, logr.Discard())
		defer s.shutdown()
		proxySide, agentSide := net.Pipe()
		go s.serveStream(agentSide, bufio.NewReader(bytes.NewReader(nil)), h)
		benchGET(b, proxySide)
	})
	b.Run("nethttp", func(b *testing.B) {
		f := &forwarder{log: logr.Discard()}
		f.kube = newReverseProxy(target, up, logr.Discard(), "kube-apiserver")
		f.kubeBulk = withBulkBuffers(f.kube)
		ln := newConnListener()
		srv := &http.Server{Handler: f, ReadHeaderTimeout: 10 * time.Second, ConnContext: withStreamInfo}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		proxySide, agentSide := net.Pipe()
		ln.push(&streamConn{Conn: agentSide, header: h})
		benchGET(b, proxySide)
	})
}

func benchGET(b *testing.B, proxySide net.Conn) {
	req := []byte("GET /api/v1/namespaces/default HTTP/1.1\r\nHost: 127.0.0.1:6443\r\nUser-Agent: kubectl/v1.34.2 (linux/amd64) kubernetes/abcdef\r\n" +
		"Accept: application/json, */*\r\nAuthorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IiJ9.x.y\r\nAccept-Encoding: gzip\r\n\r\n")
	br := bufio.NewReader(proxySide)
	get := func() {
		if _, err := proxySide.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	get()
	b.ReportAllocs()
	for b.Loop() {
		get()
	}
}

// cutBody yields one piece, then fails: an upstream connection lost in the middle of a response.
type cutBody struct{ left []byte }

func (b *cutBody) Read(p []byte) (int, error) {
	if len(b.left) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, b.left)
	b.left = b.left[n:]
	return n, nil
}

func (b *cutBody) Close() error { return nil }

type cutUpstream struct{}

func (cutUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, ContentLength: -1, Body: &cutBody{left: []byte("{\"type\":\"ADDED\"}\n")}, Request: r}, nil
}

// TestAgentServeUpstreamCut: a response without a length that the upstream cuts short ends the
// stream unterminated (the caller sees the error), for watches and other requests alike.
func TestAgentServeUpstreamCut(t *testing.T) {
	kube := upstream{name: "kube-apiserver", target: &url.URL{Scheme: "https", Host: "10.96.0.1:443"}, rt: cutUpstream{}}
	s := newAgentServer(kube, kube, 10*time.Second, logr.Discard())
	defer s.shutdown()
	for _, path := range []string{"/api/v1/pods?watch=true", "/api/v1/namespaces/d/pods/p/log?follow=true"} {
		proxySide, agentSide := net.Pipe()
		go s.serveStream(agentSide, bufio.NewReader(bytes.NewReader(nil)), StreamHeader{Target: TargetKubernetes, Auth: AuthCert})
		_ = proxySide.SetDeadline(time.Now().Add(waitLimit))
		go func() { _, _ = io.WriteString(proxySide, "GET "+path+" HTTP/1.1\r\nHost: k\r\n\r\n") }()
		resp, err := http.ReadResponse(bufio.NewReader(proxySide), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil || !bytes.Contains(b, []byte("ADDED")) {
			t.Fatalf("%s: body %q, error %v: want the piece, then an unterminated end", path, b, err)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: the stream stayed open after the upstream cut the response", path)
		}
		_ = proxySide.Close()
	}
}
