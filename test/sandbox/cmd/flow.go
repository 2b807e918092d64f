package main

import (
	"context"

	"github.com/ks-mc/ks-mc/test/sandbox"
)

// demoFlow runs the ks-mc commands of the demo on the sandbox.
func demoFlow(ctx context.Context, step func(string, ...string) error, s *sandbox.Sandbox) error {
	_ = ctx
	host := s.Clusters[0].Name
	return step("cluster roles before ks-mc", "kubectl", "--context", host, "-n", "kubesphere-system", "get", "cc", "ks-installer",
		"-o", "jsonpath={.spec.multicluster.clusterRole}{\"\\n\"}")
}
