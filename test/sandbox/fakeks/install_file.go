package fakeks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// InstallFromFile plays a fresh KubeSphere installation started from a file: ks-installer's
// cluster-configuration.yaml (`kubectl apply -f`), or KubeKey's config-sample.yaml, from which
// KubeKey applies the ClusterConfiguration document (kubekey v3 cmd/kk/pkg/kubesphere: the CC
// of the config file is written out and applied). The sandbox cluster already runs the stand-in,
// so what a previous installation left is reset first: the ClusterConfiguration, the tower
// Deployment and Service, and kubesphere-config / kubesphere-secret with a newly generated
// jwtSecret (ks-installer roles/ks-core/init-token: a random secret unless the CC sets one).
// Then the file's ClusterConfiguration is created without status, and the stand-in installer
// (Installer, which reacts to every spec change) runs it as ks-installer would.
func InstallFromFile(ctx context.Context, c *Clients, file []byte) error {
	cc, err := clusterConfigurationOf(file)
	if err != nil {
		return err
	}
	ccs := c.Dynamic.Resource(CCGVR).Namespace(Namespace)
	if err := ccs.Delete(ctx, CCName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete ClusterConfiguration: %w", err)
	}
	_ = c.Kube.AppsV1().Deployments(Namespace).Delete(ctx, "tower", metav1.DeleteOptions{})
	_ = c.Kube.CoreV1().Services(Namespace).Delete(ctx, "tower", metav1.DeleteOptions{})
	jwt, err := randomAlnum(32)
	if err != nil {
		return err
	}
	cms := c.Kube.CoreV1().ConfigMaps(Namespace)
	cm, err := cms.Get(ctx, ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get configmap %s: %w", ConfigMapName, err)
	}
	cm.Data = map[string]string{ConfigKey: strings.Replace(defaultConfig, "JWT", jwt, 1)}
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("reset configmap %s: %w", ConfigMapName, err)
	}
	_ = c.Kube.CoreV1().Secrets(Namespace).Delete(ctx, SecretName, metav1.DeleteOptions{})
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SecretName, Namespace: Namespace}, StringData: map[string]string{"secret": jwt}}
	if _, err := c.Kube.CoreV1().Secrets(Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create secret %s: %w", SecretName, err)
	}
	if _, err := ccs.Create(ctx, cc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ClusterConfiguration from the file: %w", err)
	}
	return nil
}

// clusterConfigurationOf returns the file's ClusterConfiguration document, decoded the way
// kubectl decodes YAML.
func clusterConfigurationOf(file []byte) (*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(file), 4096)
	var found *unstructured.Unstructured
	for {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("decode the file: %w", err)
		}
		u := &unstructured.Unstructured{Object: obj}
		if obj != nil && u.GetKind() == "ClusterConfiguration" {
			if found != nil {
				return nil, errors.New("the file has more than one ClusterConfiguration")
			}
			found = u
		}
	}
	if found == nil {
		return nil, errors.New("the file has no ClusterConfiguration")
	}
	if found.GetNamespace() == "" {
		found.SetNamespace(Namespace)
	}
	if found.GetName() != CCName || found.GetNamespace() != Namespace {
		return nil, fmt.Errorf("the file's ClusterConfiguration is %s/%s, not %s/%s", found.GetNamespace(), found.GetName(), Namespace, CCName)
	}
	return found, nil
}
