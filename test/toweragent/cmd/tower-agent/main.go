// Command tower-agent is test/toweragent as a program with the flags of kubesphere/tower:v0.2.1's
// /agent (cmd/agent/app/options.go, plus klog's flags with "_" spelled "-"), for the sandbox and
// the benchmarks: run it where Tower's Deployment would run /agent.
//
//	tower-agent --name=member1 --token=<token> --proxy-server=http://127.0.0.1:8080 \
//	  --keepalive=10s --kubesphere-service=127.0.0.1:9090 --kubeconfig=member.kubeconfig
//
// Like Tower's agent it exits with status 0 when its loop ends (an SSH handshake error, a failed
// config request, --max-retry reached), and with status 1 on invalid flags or config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/test/toweragent"
)

// ServiceAccountDirEnv replaces /var/run/secrets/kubernetes.io/serviceaccount (test hook).
const ServiceAccountDirEnv = "TOWER_AGENT_SERVICE_ACCOUNT_DIR"

func main() {
	o := toweragent.DefaultOptions()
	cmd := &cobra.Command{
		Use:           "Agent",
		Long:          "Agent client run in user cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := toweragent.NormalizeServer(o.Server); err != nil {
				return err
			}
			klog.Infof("Name set to %s", o.Name)
			klog.Infof("Server set to %s", o.Server)
			klog.Infof("KeepAlive set to %s", o.KeepAlive)
			o.Logf = klog.Infof
			// The sandbox has no service-account mount: it writes the pod's token and ca.crt into a
			// directory of its own and names it here (not a flag: the flags stay Tower's).
			o.ServiceAccountDir = os.Getenv(ServiceAccountDirEnv)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := toweragent.Run(ctx, o)
			if errors.Is(err, toweragent.ErrStopped) {
				klog.Error(err)
				return nil // Tower's agent exits 0 when its loop ends
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Name, "name", o.Name, "Agent name")
	fs.StringVar(&o.KubernetesApiserverSvc, "kubernetes-service", o.KubernetesApiserverSvc, "Kubernetes service name")
	fs.StringVar(&o.KubesphereApiserverSvc, "kubesphere-service", o.KubesphereApiserverSvc, "KubeSphere service name")
	fs.DurationVar(&o.KeepAlive, "keepalive", o.KeepAlive, "Keepalive duration")
	fs.IntVar(&o.MaxRetryCount, "max-retry", o.MaxRetryCount, "Maximum retries, 0 means never stop")
	fs.DurationVar(&o.MaxRetryInterval, "max-retry-interval", o.MaxRetryInterval, "Maximum duration between two retries")
	fs.StringVar(&o.Server, "proxy-server", o.Server, "Proxy server address")
	fs.StringVar(&o.Token, "token", o.Token, "Token to authenticate with proxy server")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Use kubeconfig instead of in-cluster config")
	local := flag.NewFlagSet("", flag.ExitOnError)
	klog.InitFlags(local)
	local.VisitAll(func(fl *flag.Flag) {
		fl.Name = strings.ReplaceAll(fl.Name, "_", "-")
		fs.AddGoFlag(fl)
	})
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
