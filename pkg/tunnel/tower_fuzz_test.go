package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzTowerConfig feeds arbitrary config payloads (what an unauthenticated Tower agent sends) to
// the parser and the target/credential checks. Invariants: no panic; an accepted target is a
// host:port with a port in 1-65535 and no byte outside printable ASCII; an accepted bearer token
// cannot split a header; an error never carries the token. Seeds: testdata/fuzz/FuzzTowerConfig.
func FuzzTowerConfig(f *testing.F) {
	for _, s := range []string{
		`{"Version":"0.0.0-rc","Name":"member1","Token":"abc","KubernetesSvcHost":"10.96.0.1:443","KubeSphereSvcHost":"ks-apiserver.kubesphere-system.svc:80","BearerToken":"ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklqRWlmUQ=="}`,
		`{"Name":"member1","Token":"abc","KubernetesSvcHost":"127.0.0.1:6443","KubeSphereSvcHost":"ks-apiserver.kubesphere-system.svc","CertData":"eA==","KeyData":"eA=="}`,
		`{"Name":"m","KubernetesSvcHost":"[fe80::1]:443","KubeSphereSvcHost":"[fe80::1]"}`,
		`{"Name":"m","KubernetesSvcHost":"a b:1","KubeSphereSvcHost":"x:0"}`,
		`{"name":"m","token":"t","kubernetessvchost":"h:1","kubespheresvchost":"h:2"}`,
		`{"BearerToken":"YQ0KWC1Fdmls"}`, `[]`, `null`, `{`, ``, `"x"`, `{"CAData":"bm9wZQ=="}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := parseTowerConfig(in)
		if err != nil {
			if err != errTowerConfig {
				t.Fatalf("parse error %v is not the one answer", err)
			}
			return
		}
		tg, err := validateTowerTargets(c)
		if err != nil {
			if c.Token != "" && strings.Contains(err.Error(), c.Token) && !strings.Contains(validTargetsMessages, c.Token) {
				t.Fatalf("error %q carries the token", err)
			}
			return
		}
		for _, hp := range []string{tg.kube, tg.ks} {
			h, p, err := net.SplitHostPort(hp)
			if err != nil || h == "" {
				t.Fatalf("accepted target %q is not host:port", hp)
			}
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				t.Fatalf("accepted target %q has port %q", hp, p)
			}
			for i := 0; i < len(hp); i++ {
				if hp[i] <= ' ' || hp[i] >= 0x7f || hp[i] == '/' {
					t.Fatalf("accepted target %q holds byte %q", hp, hp[i])
				}
			}
		}
		if strings.ContainsAny(tg.bearer, "\r\n \t") {
			t.Fatalf("accepted bearer token %q could split a header", tg.bearer)
		}
	})
}

// validTargetsMessages are the fixed texts of validateTowerTargets (a token equal to a piece of
// them is not a leak).
const validTargetsMessages = "invalid config: KubernetesSvcHost: target must be host:port target port must be 1-65535 KubeSphereSvcHost CAData holds no PEM certificate client certificate and key do not form a pair CertData and KeyData go together BearerToken too long BearerToken is not a token"

// FuzzTowerHandshake feeds arbitrary bytes after a valid Tower websocket upgrade (websocket frames,
// SSH, whatever a hostile client sends). Invariants: no panic, no session, the connection ends
// within the handshake timeout. Seeds: testdata/fuzz/FuzzTowerHandshake.
func FuzzTowerHandshake(f *testing.F) {
	for _, s := range [][]byte{
		nil,
		{0x82, 0x1a},
		append([]byte{0x82, 0x99, 1, 2, 3, 4}, []byte("SSH-kubesphere-v1-client\r\n")...),
		{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0},
		{0x88, 0x80, 0, 0, 0, 0},
		{0x89, 0x80, 0, 0, 0, 0, 0x81, 0x85, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'},
		bytes.Repeat([]byte{0x02, 0x80, 0, 0, 0, 0}, 64),
	} {
		f.Add(s)
	}
	pc := DefaultProxyConfig()
	pc.Authenticator = StaticAuthenticator{testCluster: testToken}
	pc.AllowPlaintextAgents = true
	pc.Config.HandshakeTimeout = 200 * time.Millisecond
	p, err := NewProxy(pc)
	if err != nil {
		f.Fatal(err)
	}
	ln := newConnListener()
	go func() { _ = p.Serve(ln) }()
	f.Cleanup(func() { _ = ln.Close() })
	upgrade := "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: kubesphere-v1\r\n\r\n"
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		if !ln.push(b) {
			t.Skip("listener closed")
		}
		defer a.Close()
		_ = a.SetDeadline(time.Now().Add(waitLimit))
		go func() { _, _ = a.Write(append([]byte(upgrade), in...)) }()
		br := bufio.NewReader(a)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer to the upgrade: %v", err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade answered %s", resp.Status)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := br.WriteTo(discard{})
			done <- err
		}()
		select {
		case <-done:
		case <-ctx.Done():
			t.Fatal("the proxy kept a hostile Tower handshake open")
		}
		if p.tower.reg.count(testCluster) != 0 {
			t.Fatal("hostile bytes became a session")
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
