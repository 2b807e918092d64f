package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ks-mc/ks-mc/test/sandbox"
)

// canIsolate reports whether members can be put in network namespaces (root, ip, nft).
func canIsolate() bool {
	if os.Geteuid() != 0 {
		return false
	}
	for _, b := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			return false
		}
	}
	return true
}

// demoFlow runs the ks-mc commands of the demo on the sandbox: init-host on the first cluster,
// join for every other one, status, then a request from the host through the tunnel.
func demoFlow(ctx context.Context, step func(string, ...string) error, s *sandbox.Sandbox) error {
	host := s.Clusters[0]
	addr := fmt.Sprintf("https://%s:8080", host.NodeIP)
	if err := step("make "+host.Name+" the KubeSphere host, serving the bundled proxy on "+addr,
		"kubectl", "ks-mc", "init-host", "--context", host.Name, "--tunnel=ks-mc", "--proxy-publish-address", addr); err != nil {
		return err
	}
	for _, m := range s.Clusters[1:] {
		where := ""
		if m.Isolated {
			where = " (its network namespace cannot be dialled from the host)"
		}
		if err := step("join "+m.Name+where+" through the agent tunnel",
			"kubectl", "ks-mc", "join", "--context", m.Name, "--host-context", host.Name); err != nil {
			return err
		}
	}
	if err := step("the fleet as the host sees it", "kubectl", "ks-mc", "status", "--host-context", host.Name); err != nil {
		return err
	}
	for _, m := range s.Clusters[1:] {
		kc := filepath.Join(s.Dir, "tunnel-"+m.Name+".kubeconfig")
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.WriteTunnelKubeconfig(tctx, host, m.Name, kc)
		cancel()
		if err != nil {
			return err
		}
		args := []string{"kubectl", "--kubeconfig", kc, "get", "namespaces"}
		title := "list " + m.Name + "'s namespaces through the tunnel, with the kubeconfig the proxy wrote into Cluster " + m.Name
		if host.Netns != "" {
			args = append([]string{"ip", "netns", "exec", host.Netns}, args...)
			title += ", from inside the host's network namespace"
		}
		if err := step(title, args...); err != nil {
			return err
		}
	}
	return nil
}
