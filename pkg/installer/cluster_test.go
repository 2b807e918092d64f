package installer

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

func TestAPIServerClock(t *testing.T) {
	skew := 42 * time.Second
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/prefix/version" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Date", time.Now().Add(skew).UTC().Format(http.TimeFormat))
		_, _ = w.Write([]byte(`{"gitVersion":"v1.34.2"}`))
	}))
	defer srv.Close()
	off, rtt, err := APIServerClock(context.Background(), &Clients{Config: &rest.Config{Host: srv.URL + "/prefix"}})
	if err != nil {
		t.Fatal(err)
	}
	if d := (off - skew).Abs(); d > 1500*time.Millisecond || rtt <= 0 {
		t.Errorf("offset %s (want ~%s), rtt %s", off, skew, rtt)
	}
	if _, _, err := APIServerClock(context.Background(), &Clients{}); err == nil {
		t.Error("no config accepted")
	}
}

func TestInspectAgentAndVersions(t *testing.T) {
	for _, tun := range []kubesphere.Tunnel{kubesphere.TunnelTower, kubesphere.TunnelKsMc} {
		d := agentDeployment(t, "http://203.0.113.10:30881", "m1")
		if tun == kubesphere.TunnelKsMc {
			c := &d.Spec.Template.Spec.Containers[0]
			c.Command, c.Args = nil, []string{"agent", "--name=m1", "--proxy-server=http://203.0.113.10:30881", "--token-file=/t"}
		}
		info := InspectAgent(d)
		if info.Tunnel != tun || info.ClusterName != "m1" || info.ProxyServer != "http://203.0.113.10:30881" {
			t.Errorf("%s: %+v", tun, info)
		}
	}
	if !sameProxy("HTTP://1.2.3.4:80/", "http://1.2.3.4:80") || sameProxy("http://1.2.3.4:80", "http://1.2.3.4:81") {
		t.Error("sameProxy")
	}
	for v, want := range map[string][3]int{"v3.4.1": {3, 4, 1}, "3.3": {3, 3, 0}, "v3.4.1-rc.1": {3, 4, 1}} {
		a, b, c, ok := kubeSphereVersion(v)
		if !ok || [3]int{a, b, c} != want {
			t.Errorf("%s → %d.%d.%d %v", v, a, b, c, ok)
		}
	}
	if _, _, _, ok := kubeSphereVersion("latest"); ok {
		t.Error("latest parsed")
	}
}
