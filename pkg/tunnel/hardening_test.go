package tunnel

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Hostile-input and identity tests of the proxy port, the sessions and the per-cluster listeners
// (issue 9). Each of them fails on 0d0d212.

// rawRequest sends req on a fresh TCP connection to addr and returns the response and its body.
func rawRequest(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitLimit))
	// Written concurrently: the server may answer (431) before it read everything.
	go func() { _, _ = io.WriteString(c, req) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp, string(b)
}

func upgradeRequest(cluster, token string) string {
	r := "GET " + TunnelPath + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: " + UpgradeProtocol + "\r\n"
	if cluster != "" {
		r += ClusterHeader + ": " + cluster + "\r\n"
	}
	if token != "" {
		r += "Authorization: Bearer " + token + "\r\n"
	}
	return r + "\r\n"
}

// TestProxyHugeHeaders: 200 unauthenticated requests with a 1 MB X-Ksmc-Cluster are answered 431
// before the name is used; the heap does not keep them and the log does not echo them.
func TestProxyHugeHeaders(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	huge := strings.Repeat("a", 1_000_000)
	for i := 0; i < 200; i++ {
		resp, _ := rawRequest(t, h.addr, upgradeRequest(huge+strconv.Itoa(i), "x"))
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("request %d with a 1 MB cluster header: %s, want 431", i, resp.Status)
		}
	}
	huge = ""
	runtime.GC()
	runtime.ReadMemStats(&ms)
	growth := int64(ms.HeapAlloc) - int64(before)
	t.Logf("heap growth after 200 requests with 1 MB headers: %d KiB", growth>>10)
	if growth > 32<<20 {
		t.Fatalf("heap grew by %d MiB", growth>>20)
	}
	if strings.Contains(h.logs.all(), strings.Repeat("a", 100)) {
		t.Fatal("the log echoes the header")
	}
}

// TestProxyMalformedClusterNames: a name that is not a DNS-1123 label of at most 60 characters is
// answered like an unknown cluster, and never logged.
func TestProxyMalformedClusterNames(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	ref, refBody := rawRequest(t, h.addr, upgradeRequest("nosuch", "x"))
	for _, name := range []string{"Member1", "a_b", strings.Repeat("b", 61), "-abc", "abc-", "a.b.c", "a%2fb", "x/../y"} {
		resp, body := rawRequest(t, h.addr, upgradeRequest(name, "x"))
		if resp.StatusCode != ref.StatusCode || body != refBody {
			t.Errorf("cluster %q: %s %q, want the unknown-cluster answer %s %q", name, resp.Status, body, ref.Status, refBody)
		}
		if strings.Contains(h.logs.all(), name) {
			t.Errorf("the log echoes the malformed name %q", name)
		}
	}
	if !strings.Contains(h.logs.all(), "nosuch") {
		t.Fatal("a valid unknown name is not logged")
	}
}

// TestNoClusterNameOracle: an unknown cluster, a known one with a wrong token and a known one
// without a token get the same answer.
func TestNoClusterNameOracle(t *testing.T) {
	h := newHarness(t, "tcp")
	h.start()
	type answer struct {
		status, body string
		header       http.Header
	}
	get := func(cluster, token string) answer {
		resp, body := rawRequest(t, h.addr, upgradeRequest(cluster, token))
		hd := resp.Header.Clone()
		hd.Del("Date")
		return answer{resp.Status, body, hd}
	}
	known := get(testCluster, "ffff"+testToken[4:])
	for _, c := range []struct{ cluster, token string }{{"nosuch", "ffff" + testToken[4:]}, {"nosuch", testToken}, {testCluster, ""}, {"nosuch", ""}} {
		a := get(c.cluster, c.token)
		if a.status != known.status || a.body != known.body || len(a.header) != len(known.header) {
			t.Fatalf("cluster %q token set %v: %s %q %v; a known cluster with a wrong token: %s %q %v",
				c.cluster, c.token != "", a.status, a.body, a.header, known.status, known.body, known.header)
		}
		for k := range known.header {
			if a.header.Get(k) != known.header.Get(k) {
				t.Fatalf("header %s: %q vs %q", k, a.header.Get(k), known.header.Get(k))
			}
		}
	}
}
