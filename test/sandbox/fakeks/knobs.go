package fakeks

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Knobs are the stand-in's test switches, read from ConfigMap kube-system/ks-mc-sandbox.
type Knobs struct {
	InstallerFail  bool
	InstallerDelay time.Duration
	LoadBalancer   bool
}

// ReadKnobs returns the current knobs (defaults when the ConfigMap is absent).
func ReadKnobs(ctx context.Context, kube kubernetes.Interface) Knobs {
	k := Knobs{InstallerDelay: 2 * time.Second}
	cm, err := kube.CoreV1().ConfigMaps(KnobsNamespace).Get(ctx, KnobsConfigMap, metav1.GetOptions{})
	if err != nil {
		return k
	}
	k.InstallerFail = cm.Data[KnobInstallerFail] == "true"
	k.LoadBalancer = cm.Data[KnobLoadBalancer] == "true"
	if d, err := time.ParseDuration(cm.Data[KnobInstallerDelay]); err == nil {
		k.InstallerDelay = d
	}
	return k
}
