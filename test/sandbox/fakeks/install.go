package fakeks

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// Clients bundles what the stand-in needs for one cluster.
type Clients struct {
	Config  *rest.Config
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	APIExt  apiextclient.Interface
}

// NewClients builds the clients from a rest config.
func NewClients(cfg *rest.Config) (*Clients, error) {
	cfg = rest.CopyConfig(cfg)
	// KubeSphere's finalizer name draws an API warning on every update: not news in test logs.
	cfg.WarningHandler = rest.NoWarnings{}
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	a, err := apiextclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Clients{Config: cfg, Kube: k, Dynamic: d, APIExt: a}, nil
}

// Install creates what a fresh KubeSphere 3.4 installation has (idempotent).
func Install(ctx context.Context, c *Clients) error {
	for _, doc := range []string{ccCRD, clusterCRD} {
		crd := &apiextv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal([]byte(doc), crd); err != nil {
			return fmt.Errorf("parse CRD: %w", err)
		}
		if _, err := c.APIExt.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", crd.Name, err)
		}
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			got, err := c.APIExt.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, cond := range got.Status.Conditions {
				if cond.Type == apiextv1.Established && cond.Status == apiextv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			return fmt.Errorf("wait for CRD %s: %w", crd.Name, err)
		}
	}
	for _, ns := range []string{Namespace, "kubesphere-controls-system", "kubesphere-monitoring-system"} {
		if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
	}
	if _, err := c.Kube.CoreV1().ServiceAccounts(Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "kubesphere"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create serviceaccount kubesphere: %w", err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubesphere"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kubesphere", Namespace: Namespace}},
	}
	if _, err := c.Kube.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create clusterrolebinding kubesphere: %w", err)
	}
	jwt, err := randomAlnum(32)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: Namespace},
		Data:       map[string]string{ConfigKey: strings.Replace(defaultConfig, "JWT", jwt, 1)},
	}
	if _, err := c.Kube.CoreV1().ConfigMaps(Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create configmap %s: %w", ConfigMapName, err)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SecretName, Namespace: Namespace}, StringData: map[string]string{"secret": jwt}}
	if _, err := c.Kube.CoreV1().Secrets(Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create secret %s: %w", SecretName, err)
	}
	for _, d := range []struct{ name, image string }{
		{"ks-installer", "kubesphere/ks-installer:" + KubeSphereVer},
		{"ks-apiserver", "kubesphere/ks-apiserver:" + KubeSphereVer},
		{"ks-controller-manager", "kubesphere/ks-controller-manager:" + KubeSphereVer},
		{"ks-console", "kubesphere/ks-console:" + KubeSphereVer},
	} {
		if err := ensureDeployment(ctx, c.Kube, deployment(d.name, d.image, map[string]string{"app": d.name, "tier": "backend"})); err != nil {
			return err
		}
	}
	cc := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(defaultCC), &cc.Object); err != nil {
		return fmt.Errorf("parse default ClusterConfiguration: %w", err)
	}
	created, err := c.Dynamic.Resource(CCGVR).Namespace(Namespace).Create(ctx, cc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create ClusterConfiguration: %w", err)
	}
	// The status a finished installation leaves behind.
	now := time.Now().UTC().Format(time.RFC3339)
	_ = unstructured.SetNestedMap(created.Object, map[string]any{
		"core":      map[string]any{"status": "enabled", "enabledTime": now, "version": KubeSphereVer},
		"clusterId": string(created.GetUID()),
	}, "status")
	if _, err := c.Dynamic.Resource(CCGVR).Namespace(Namespace).Update(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set ClusterConfiguration status: %w", err)
	}
	return nil
}

func deployment(name, image string, labels map[string]string) *appsv1.Deployment {
	one := int32(1)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "kubesphere",
					Containers:         []corev1.Container{{Name: name, Image: image}},
				},
			},
		},
	}
}

func ensureDeployment(ctx context.Context, kube kubernetes.Interface, d *appsv1.Deployment) error {
	if _, err := kube.AppsV1().Deployments(d.Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	return nil
}

func randomAlnum(n int) (string, error) {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		v, err := rand.Int(rand.Reader, big.NewInt(int64(len(chars))))
		if err != nil {
			return "", err
		}
		b[i] = chars[v.Int64()]
	}
	return string(b), nil
}
