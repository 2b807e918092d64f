package fakeks

import (
	"context"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LoadBalancer simulates a cloud load balancer when the loadBalancer knob is on: every Service of
// type LoadBalancer gets the cluster's node IP as its ingress IP (its pods listen there).
type LoadBalancer struct {
	Clients *Clients
	NodeIP  string
	Log     io.Writer
}

// Run loops until ctx ends.
func (lb *LoadBalancer) Run(ctx context.Context) {
	for {
		if ReadKnobs(ctx, lb.Clients.Kube).LoadBalancer {
			if err := lb.reconcile(ctx); err != nil && ctx.Err() == nil {
				fmt.Fprintf(lb.Log, "load-balancer: %v\n", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (lb *LoadBalancer) reconcile(ctx context.Context) error {
	svcs, err := lb.Clients.Kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range svcs.Items {
		s := &svcs.Items[i]
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer || len(s.Status.LoadBalancer.Ingress) > 0 {
			continue
		}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lb.NodeIP}}
		if _, err := lb.Clients.Kube.CoreV1().Services(s.Namespace).UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("set load balancer ingress of %s/%s: %w", s.Namespace, s.Name, err)
		}
		fmt.Fprintf(lb.Log, "load-balancer: %s/%s ingress %s\n", s.Namespace, s.Name, lb.NodeIP)
	}
	return nil
}
