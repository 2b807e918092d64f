package kube

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ks-mc/ks-mc/pkg/kubesphere"
	"github.com/ks-mc/ks-mc/pkg/tunnel"
)

// LoadOrCreateCA reads the proxy CA from Secret namespace/name (type kubernetes.io/tls), creating
// it on first use. The Secret's annotation ks-mc.io/ca-cert-hash holds the agents' pin.
func LoadOrCreateCA(ctx context.Context, kube kubernetes.Interface, namespace, name string, log logr.Logger) (*tunnel.CA, error) {
	secrets := kube.CoreV1().Secrets(namespace)
	for i := 0; i < 3; i++ {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			ca, err := tunnel.ParseCA(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
			if err != nil {
				return nil, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
			}
			if left := time.Until(ca.Cert.NotAfter); left < tunnel.CAValidity/10 {
				log.Info("WARNING: the proxy CA expires soon; delete the Secret to rotate it, then re-join members (their --ca-cert-hash changes)",
					"secret", namespace+"/"+name, "notAfter", ca.Cert.NotAfter)
			}
			return ca, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("get Secret %s/%s: %w", namespace, name, err)
		}
		ca, err := tunnel.NewCA("ks-mc-proxy-ca")
		if err != nil {
			return nil, err
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
				Labels:      map[string]string{kubesphere.ManagedByLabel: kubesphere.ManagedByValue},
				Annotations: map[string]string{kubesphere.CAHashAnnotation: ca.Hash()}},
			Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{corev1.TLSCertKey: ca.CertPEM, corev1.TLSPrivateKeyKey: ca.KeyPEM},
		}, metav1.CreateOptions{FieldManager: kubesphere.FieldManager})
		if err == nil {
			log.Info("created the proxy CA", "secret", namespace+"/"+name, "caCertHash", ca.Hash())
			return ca, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create Secret %s/%s: %w", namespace, name, err)
		}
	}
	return nil, fmt.Errorf("secret %s/%s: could not read or create the proxy CA", namespace, name)
}
