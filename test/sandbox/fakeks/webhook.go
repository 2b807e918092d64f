package fakeks

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeSphere 3.4's validating webhook on Cluster UPDATE, as shipped:
//   - the configuration: kubesphere/ks-installer v3.4.1
//     roles/ks-core/ks-core/files/ks-core/templates/webhook.yaml, ValidatingWebhookConfiguration
//     "cluster.kubesphere.io", webhook "validating-cluster.kubesphere.io", rules
//     cluster.kubesphere.io/v1alpha1 clusters UPDATE, failurePolicy Fail, matchPolicy Exact,
//     sideEffects None, timeoutSeconds 30, admissionReviewVersions [v1beta1], objectSelector {};
//   - the handler: kubesphere/kubesphere v3.4.1 pkg/controller/cluster/cluster_webhook.go
//     (ValidatingHandler.Handle), served by ks-controller-manager at
//     /validate-cluster-kubesphere-io-v1alpha1 only when the cluster controller runs with
//     multicluster enabled (cmd/controller-manager/app/server.go).
//
// The rule: an UPDATE is allowed when the old object has no status.uid; otherwise the NEW object's
// spec.connection.kubeconfig must load, and a GET of namespace kube-system through it must succeed
// and return the old status.uid. Nothing else is exempt: a finalizer removal, a status-only change
// or an update of a Terminating Cluster is checked the same way.
const (
	ClusterWebhookConfigName = "cluster.kubesphere.io"
	ClusterWebhookName       = "validating-cluster.kubesphere.io"
	ClusterWebhookPath       = "/validate-cluster-kubesphere-io-v1alpha1"
	clusterWebhookTimeout    = 30
	// ClusterWebhookDenyUID is KubeSphere's message for a kubeconfig of another cluster.
	ClusterWebhookDenyUID = "this kubeconfig corresponds to a different cluster than the previous one, you need to make sure that kubeconfig is not from another cluster"
)

// ClusterWebhook serves that webhook for one cluster from the stand-in's controller process
// (where ks-controller-manager would run) and keeps its ValidatingWebhookConfiguration pointing
// at it: a url clientConfig with the CA of a serving certificate made at start.
type ClusterWebhook struct {
	Clients *Clients
	// NodeIP maps Service ClusterIPs in a Cluster's kubeconfig (the sandbox has no kube-proxy).
	NodeIP string
	// BindAddress is an address of this process the cluster's kube-apiserver can dial.
	BindAddress string
	Log         io.Writer

	// enabled reports whether the handler is registered; nil: always. KubeSphere registers it
	// only with multicluster enabled (any Cluster update then fails: failurePolicy Fail); the
	// stand-in serves it on every cluster, since a Cluster object on a cluster that is no host
	// does not occur with KubeSphere, and the tunnel's e2e tests run the proxy on a cluster that
	// was never made host.
	enabled func(context.Context) bool
}

// Run serves until ctx ends.
func (w *ClusterWebhook) Run(ctx context.Context) {
	if err := w.run(ctx); err != nil && ctx.Err() == nil {
		fmt.Fprintf(w.Log, "ks-controller-manager webhook: %v\n", err)
	}
}

func (w *ClusterWebhook) run(ctx context.Context) error {
	bind := w.BindAddress
	if bind == "" {
		bind = "127.0.0.1"
	}
	caPEM, cert, err := webhookCert(bind)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(bind, "0"))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(ClusterWebhookPath, w.serveHTTP)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	go func() { _ = srv.ServeTLS(l, "", "") }()
	url := "https://" + net.JoinHostPort(bind, strconv.Itoa(l.Addr().(*net.TCPAddr).Port)) + ClusterWebhookPath
	// Point the configuration here once (ks-installer applies it on its runs, not continuously:
	// whoever deletes it has it gone until then).
	for {
		err := w.applyConfig(ctx, url, caPEM)
		if err == nil {
			break
		}
		if ctx.Err() == nil {
			fmt.Fprintf(w.Log, "ks-controller-manager webhook: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	<-ctx.Done()
	return nil
}

// ClusterWebhookConfig is the ValidatingWebhookConfiguration of ks-installer v3.4.1 with a url
// clientConfig instead of the ks-controller-manager Service.
func ClusterWebhookConfig(url string, caPEM []byte) *admissionregistrationv1.ValidatingWebhookConfiguration {
	fail := admissionregistrationv1.Fail
	exact := admissionregistrationv1.Exact
	none := admissionregistrationv1.SideEffectClassNone
	scope := admissionregistrationv1.AllScopes
	timeout := int32(clusterWebhookTimeout)
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: ClusterWebhookConfigName},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    ClusterWebhookName,
			AdmissionReviewVersions: []string{"v1beta1"},
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM},
			FailurePolicy:           &fail,
			MatchPolicy:             &exact,
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "control-plane", Operator: metav1.LabelSelectorOpDoesNotExist}}},
			ObjectSelector: &metav1.LabelSelector{},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
				Rule: admissionregistrationv1.Rule{APIGroups: []string{"cluster.kubesphere.io"}, APIVersions: []string{"v1alpha1"},
					Resources: []string{"clusters"}, Scope: &scope},
			}},
			SideEffects:    &none,
			TimeoutSeconds: &timeout,
		}},
	}
}

func (w *ClusterWebhook) applyConfig(ctx context.Context, url string, caPEM []byte) error {
	api := w.Clients.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	want := ClusterWebhookConfig(url, caPEM)
	cur, err := api.Get(ctx, want.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, want, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if len(cur.Webhooks) == 1 && cur.Webhooks[0].ClientConfig.URL != nil && *cur.Webhooks[0].ClientConfig.URL == url &&
		string(cur.Webhooks[0].ClientConfig.CABundle) == string(caPEM) {
		return nil
	}
	want.ResourceVersion = cur.ResourceVersion
	_, err = api.Update(ctx, want, metav1.UpdateOptions{})
	return err
}

// admissionReview is admission.k8s.io v1beta1 (and v1: same shape) AdmissionReview, the part used.
type admissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *admissionRequest  `json:"request,omitempty"`
	Response   *admissionResponse `json:"response,omitempty"`
}

type admissionRequest struct {
	UID       types.UID       `json:"uid"`
	Operation string          `json:"operation"`
	Name      string          `json:"name"`
	Object    json.RawMessage `json:"object,omitempty"`
	OldObject json.RawMessage `json:"oldObject,omitempty"`
}

type admissionResponse struct {
	UID     types.UID      `json:"uid"`
	Allowed bool           `json:"allowed"`
	Result  *metav1.Status `json:"status,omitempty"` // "status" in the wire format (AdmissionResponse.Result)
}

// webhookCluster is the part of a Cluster the handler reads.
type webhookCluster struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Connection struct {
			KubeConfig []byte `json:"kubeconfig,omitempty"`
		} `json:"connection"`
	} `json:"spec"`
	Status struct {
		UID string `json:"uid,omitempty"`
	} `json:"status"`
}

func (w *ClusterWebhook) serveHTTP(rw http.ResponseWriter, r *http.Request) {
	if w.enabled != nil && !w.enabled(r.Context()) {
		// ks-controller-manager registers the path only with multicluster enabled.
		http.NotFound(rw, r)
		return
	}
	var review admissionReview
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&review); err != nil || review.Request == nil {
		http.Error(rw, "bad AdmissionReview", http.StatusBadRequest)
		return
	}
	resp := w.review(r.Context(), review.Request)
	resp.UID = review.Request.UID
	out := admissionReview{APIVersion: review.APIVersion, Kind: "AdmissionReview", Response: resp}
	if out.APIVersion == "" {
		out.APIVersion = "admission.k8s.io/v1beta1"
	}
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(out)
}

func allowed() *admissionResponse { return &admissionResponse{Allowed: true} }

// denied is controller-runtime's admission.Denied (403), Errored(code) for decode errors.
func denied(code int32, msg string) *admissionResponse {
	return &admissionResponse{Result: &metav1.Status{Code: code, Reason: metav1.StatusReason(msg), Message: msg}}
}

// review is ValidatingHandler.Handle of KubeSphere v3.4.1.
func (w *ClusterWebhook) review(ctx context.Context, req *admissionRequest) *admissionResponse {
	if req.Operation != "UPDATE" {
		return allowed()
	}
	var newC, oldC webhookCluster
	if err := json.Unmarshal(req.Object, &newC); err != nil {
		return denied(http.StatusBadRequest, err.Error())
	}
	if err := json.Unmarshal(req.OldObject, &oldC); err != nil {
		return denied(http.StatusBadRequest, err.Error())
	}
	// The cluster created for the first time has no status information.
	if oldC.Status.UID == "" {
		return allowed()
	}
	uid, err := w.memberUID(ctx, newC.Metadata.Name, newC.Spec.Connection.KubeConfig)
	if err != nil {
		return denied(http.StatusForbidden, err.Error())
	}
	if uid != oldC.Status.UID {
		return denied(http.StatusForbidden, ClusterWebhookDenyUID)
	}
	return allowed()
}

// memberUID reaches the member through the kubeconfig, as KubeSphere does (the ClusterIP of
// Service mc-<name> is routed to the node, like kube-proxy would).
func (w *ClusterWebhook) memberUID(ctx context.Context, name string, kubeconfig []byte) (string, error) {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return "", fmt.Errorf("failed to load cluster config for %s: %s", name, err)
	}
	if err := routeService(ctx, w.Clients, w.NodeIP, cfg); err != nil {
		return "", err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return string(ns.UID), nil
}

// webhookCert makes a CA and a serving certificate for ip.
func webhookCert(ip string) ([]byte, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ks-controller-manager-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	addr := net.ParseIP(ip)
	if addr == nil {
		return nil, tls.Certificate{}, errors.New("webhook bind address is not an IP")
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ks-controller-manager-admission-webhook"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour), IPAddresses: []net.IP{addr},
		DNSNames: []string{"ks-controller-manager.kubesphere-system", "ks-controller-manager.kubesphere-system.svc"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return caPEM, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
