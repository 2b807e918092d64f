package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// towerCluster is the second Cluster of the host, served by a Tower v0.2.x agent
// (test/toweragent/cmd/tower-agent, Tower's /agent flags) through the same proxy process: the
// Tower column. Its agent runs in the member's network namespace like the ks-mc agent and forwards
// to the same kube-apiserver.
const towerCluster = "member1-tower"

// setupTower returns the Tower target, or an error saying why there is none.
func (e *env) setupTower(ctx context.Context) (*target, error) {
	if e.o.towerAgent == "" {
		return nil, errors.New("no -tower-agent binary")
	}
	bin, err := filepath.Abs(e.o.towerAgent)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("tower agent binary: %w", err)
	}
	host, member := e.sb.Cluster("host"), e.sb.Cluster(cluster)
	hostCfg, err := host.RESTConfig()
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(hostCfg)
	if err != nil {
		return nil, err
	}
	clusters := dyn.Resource(kubesphere.ClusterGVR)
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cluster.kubesphere.io/v1alpha1", "kind": "Cluster",
		"metadata": map[string]any{"name": towerCluster},
		"spec":     map[string]any{"provider": "kubesphere", "joinFederation": true, "connection": map[string]any{"type": "proxy"}},
	}}
	if _, err := clusters.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	var token string
	if err := eventually(time.Minute, "Cluster "+towerCluster+" token", func() error {
		c, err := clusters.Get(ctx, towerCluster, metav1.GetOptions{})
		if err != nil {
			return err
		}
		token, _, _ = unstructured.NestedString(c.Object, "spec", "connection", "token")
		if token == "" {
			return errors.New("no token yet")
		}
		return nil
	}); err != nil {
		return nil, err
	}
	// Tower's agent reads the member's kubeconfig (server, CA); requests carry the caller's token.
	mkc := filepath.Join(e.dir, "tower-member.kubeconfig")
	raw, err := os.ReadFile(filepath.Join(member.DataDir, "kubeconfig"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(mkc, raw, 0o600); err != nil {
		return nil, err
	}
	// Tower's agent takes its token on the command line (its flags, unchanged): a bench-only Cluster.
	ta, err := startProc("tower-agent", filepath.Join(e.dir, "tower-agent.log"), nil,
		"ip", "netns", "exec", member.Netns, bin, "--name", towerCluster, "--token", token,
		"--proxy-server", "http://"+e.proxyAddr, "--keepalive", "10s", "--kubesphere-service", "127.0.0.1:1",
		"--kubeconfig", mkc, "--v", "0")
	if err != nil {
		return nil, err
	}
	e.towerAgent = ta
	var kc []byte
	var kport int64
	if err := eventually(time.Minute, "tower agent connected (Cluster kubeconfig)", func() error {
		c, err := clusters.Get(ctx, towerCluster, metav1.GetOptions{})
		if err != nil {
			return err
		}
		b64, _, _ := unstructured.NestedString(c.Object, "spec", "connection", "kubeconfig")
		kport, _, _ = unstructured.NestedInt64(c.Object, "spec", "connection", "kubernetesAPIServerPort")
		if b64 == "" || kport == 0 {
			return errors.New("no kubeconfig yet")
		}
		kc, err = base64.StdEncoding.DecodeString(b64)
		return err
	}); err != nil {
		b, _ := os.ReadFile(filepath.Join(e.dir, "tower-agent.log"))
		return nil, fmt.Errorf("%w; tower agent log: %s", err, tailOf(string(b), 5))
	}
	tkc, err := clientcmd.Load(kc)
	if err != nil {
		return nil, err
	}
	cfg := &rest.Config{Host: "https://" + net.JoinHostPort(e.rootIP, strconv.FormatInt(kport, 10)), BearerToken: e.memberCfg.BearerToken}
	for _, c := range tkc.Clusters {
		cfg.CAData = c.CertificateAuthorityData
		cfg.ServerName = c.TLSServerName
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(strings.TrimPrefix(c.Server, "https://"))
		}
	}
	t, err := newTarget("tower", cfg, []*proc{e.proxy, ta})
	if err != nil {
		return nil, err
	}
	if err := eventually(time.Minute, "first request through the Tower agent", func() error {
		_, err := get(t.plain, t.base, smallPath)
		return err
	}); err != nil {
		return nil, err
	}
	return t, nil
}

func tailOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
