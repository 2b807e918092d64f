package tunnel

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
)

// FuzzStreamHeader feeds arbitrary bytes to the agent's stream header parser and the proxy's
// answer parser. Seeds: testdata/fuzz/FuzzStreamHeader (replayed by every `go test`).
func FuzzStreamHeader(f *testing.F) {
	for _, s := range []string{
		"KSMC1 kubernetes cert\n", "KSMC1 kubernetes token\nGET / HTTP/1.1\r\n\r\n", "KSMC1 kubesphere none\n",
		"KSMC1 control goaway\n", "KSMC1 kubernetes none\n", "KSMC1  \n", "KSMC2 kubernetes cert\n", "\n", "",
		"OK\n", "ERR unknown-target\n", "ERR going-away\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := readStreamHeader(bufio.NewReaderSize(bytes.NewReader(in), 64))
		if err == nil {
			if verr := h.Validate(); verr != nil {
				t.Fatalf("accepted an invalid header %+v: %v", h, verr)
			}
			if !bytes.HasPrefix(in, h.encode()) {
				t.Fatalf("accepted %q, which does not start with its encoding %q", in, h.encode())
			}
		} else if !errors.Is(err, ErrBadStreamHeader) && !errors.Is(err, ErrUnknownTarget) && len(bytes.TrimRight(in, "\n")) > 0 && bytes.IndexByte(in, '\n') >= 0 && bytes.IndexByte(in, '\n') <= maxHeaderLine {
			t.Fatalf("header %q: error %v wraps no sentinel", in, err)
		}
		// Whatever the agent answers to it, the proxy reads back the same class of error.
		var ans bytes.Buffer
		if werr := writeAnswer(&ans, err); werr != nil {
			t.Fatal(werr)
		}
		line, lerr := readLine(bufio.NewReader(&ans))
		if lerr != nil {
			t.Fatalf("read own answer %q: %v", ans.String(), lerr)
		}
		perr := parseAnswer(line)
		if (err == nil) != (perr == nil) {
			t.Fatalf("answer %q to %v parsed as %v", line, err, perr)
		}
		// The answer parser itself must not panic on anything.
		if l, e := readLine(bufio.NewReader(bytes.NewReader(in))); e == nil {
			_ = parseAnswer(l)
		}
	})
}

// FuzzTunnelHandshake feeds arbitrary HTTP requests to the proxy's agent endpoint (the upgrade
// and authentication handling, after net/http parsed them). Invariants: only the valid
// cluster/token pair is admitted; a malformed cluster name is never echoed nor made a limiter
// key; the limiter stays within its capacity. Seeds: testdata/fuzz/FuzzTunnelHandshake.
func FuzzTunnelHandshake(f *testing.F) {
	for _, s := range []string{
		upgradeRequest(testCluster, testToken), upgradeRequest(testCluster, "wrong"), upgradeRequest("nosuch", testToken),
		upgradeRequest("", ""), upgradeRequest("Member1", testToken), upgradeRequest(strings.Repeat("a", 61), "x"),
		"GET " + TunnelPath + " HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c, " + UpgradeProtocol + "\r\n" +
			ClusterHeader + ": member1\r\nAuthorization: bearer " + testToken + "\r\n\r\n",
		"POST " + TunnelPath + " HTTP/1.1\r\nHost: x\r\n\r\n", "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", "GET /metrics HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	pc := DefaultProxyConfig()
	pc.Authenticator = StaticAuthenticator{testCluster: testToken}
	pc.AllowPlaintextAgents = true
	pc.FailureKeys = 64
	discard := logr.Discard()
	pc.Logger = &discard
	p, err := NewProxy(pc)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte, overTLS bool) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // net/http's parser refuses it before any ks-mc code runs
		}
		r.RemoteAddr = "192.0.2.7:40000"
		if overTLS {
			r.TLS = &tls.ConnectionState{}
		}
		w := httptest.NewRecorder()
		p.Handler().ServeHTTP(w, r)
		cluster := r.Header.Get(ClusterHeader)
		admitted := w.Code == http.StatusInternalServerError // the recorder cannot be hijacked
		if admitted {
			tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if r.URL.Path != TunnelPath || cluster != testCluster || tok != testToken {
				t.Fatalf("admitted cluster %q with another token to %s", cluster, r.URL.Path)
			}
		}
		if !validClusterName(cluster) && len(cluster) > 3 && strings.Contains(w.Body.String(), cluster) {
			t.Fatalf("the answer echoes the malformed cluster name %q", cluster)
		}
		if n := p.limiter.len(); n > pc.FailureKeys {
			t.Fatalf("%d limiter buckets, capacity %d", n, pc.FailureKeys)
		}
	})
}

// agentFuzzEnv is one agent (its stream handler and forwarder) against a fake kube-apiserver and
// ks-apiserver, shared by the runs of FuzzAgentStream.
type agentFuzzEnv struct {
	a     *Agent
	stray atomic.Int64 // requests with the agent's credentials on a token stream
}

func newAgentFuzzEnv(f *testing.F) *agentFuzzEnv {
	env := &agentFuzzEnv{}
	kube := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer "+agentSAToken && r.Header.Get("X-Fuzz-Mode") == AuthToken {
			env.stray.Add(1)
		}
		_, _ = io.WriteString(w, "kube")
	}))
	kube.EnableHTTP2 = true
	kube.StartTLS()
	f.Cleanup(kube.Close)
	ks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ks") }))
	f.Cleanup(ks.Close)
	ac := DefaultAgentConfig()
	ac.Config = testConfig()
	ac.Config.StreamOpenTimeout = 50 * time.Millisecond
	ac.ProxyURL, ac.ClusterName = "http://unused.invalid", testCluster
	ac.Token = func() (string, error) { return testToken, nil }
	ac.Kubernetes = testUpstream(f, &rest.Config{Host: kube.URL, BearerToken: agentSAToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: pemCert(kube.Certificate())}})
	ac.KubeSphereService = strings.TrimPrefix(ks.URL, "http://")
	discard := logr.Discard()
	ac.Logger = &discard
	a, err := NewAgent(ac)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(a.srv.shutdown)
	env.a = a
	return env
}

// FuzzAgentStream feeds arbitrary stream contents (header line, then HTTP/1.1) to the agent's
// stream handler and request forwarder, as a hostile or broken proxy could send them.
// Invariants: the answer is "OK" exactly when the header is valid, else one of the ERR reasons;
// a token-mode request never leaves with the agent's own credentials. Seeds:
// testdata/fuzz/FuzzAgentStream.
func FuzzAgentStream(f *testing.F) {
	for _, s := range []string{
		"KSMC1 kubernetes token\nGET /api HTTP/1.1\r\nHost: kubernetes\r\nX-Fuzz-Mode: token\r\n\r\n",
		"KSMC1 kubernetes token\nGET /api HTTP/1.1\r\nHost: kubernetes\r\nX-Fuzz-Mode: token\r\nAuthorization: Bearer u\r\n\r\n",
		"KSMC1 kubernetes cert\nGET /api?watch=true HTTP/1.1\r\nHost: kubernetes\r\n\r\n",
		"KSMC1 kubernetes cert\nGET /api HTTP/1.1\r\nHost: kubernetes\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
		"KSMC1 kubesphere none\nGET /kapis/version HTTP/1.1\r\nHost: ks\r\n\r\n",
		"KSMC1 kubernetes cert\nPOST /api HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"KSMC1 control goaway\n", "KSMC1 etcd none\nGET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	env := newAgentFuzzEnv(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		// A control stream turns keep-alives off for the whole agent: restore them.
		defer env.a.srv.setKeepAlives(true)
		_, herr := readStreamHeader(bufio.NewReaderSize(bytes.NewReader(in), 256))
		proxySide, agentSide := net.Pipe()
		defer proxySide.Close()
		go env.a.handleStream(agentSide)
		go func() { _, _ = proxySide.Write(in) }()
		_ = proxySide.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(proxySide)
		line, err := readLine(br)
		if err != nil {
			if herr == nil || errors.Is(herr, io.EOF) || errors.Is(herr, io.ErrUnexpectedEOF) {
				return // a valid header whose stream ended before any answer, or no header at all
			}
			t.Fatalf("no answer to %q: %v", in, err)
		}
		perr := parseAnswer(line)
		if (herr == nil) != (perr == nil) {
			t.Fatalf("header error %v, answer %q", herr, line)
		}
		if perr == nil {
			// One response at most (the agent keeps the stream open for the next request).
			if resp, err := http.ReadResponse(br, nil); err == nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
			}
		}
		if n := env.stray.Load(); n > 0 {
			t.Fatalf("%d token-mode request(s) left with the agent's credentials", n)
		}
	})
}
