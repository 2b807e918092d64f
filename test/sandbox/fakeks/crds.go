// Package fakeks is a TEST DOUBLE of the parts of KubeSphere 3.4 that ks-mc touches: the CRDs, the
// kubesphere-system objects a fresh installation has, ks-installer's reaction to ClusterConfiguration
// changes, and ks-controller-manager's cluster controller. It is not KubeSphere; it implements the
// contract in ../../../../shared/kubesphere-contract.md closely enough for ks-mc's end-to-end tests.
// Tower is played only as far as ks-mc can observe it (tower.go): while the host runs KubeSphere's
// Tower image, Clusters get ports, a token, an mc-<name> Service and Initialized, and an agent
// Deployment of the Tower image "connects" when its name, token and proxy address match. Once the
// host runs ks-mc's bundled proxy instead, the real thing (pkg/tunnel) does all of it.
package fakeks

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// KubeSphere resources.
var (
	CCGVR      = schema.GroupVersionResource{Group: "installer.kubesphere.io", Version: "v1alpha1", Resource: "clusterconfigurations"}
	ClusterGVR = schema.GroupVersionResource{Group: "cluster.kubesphere.io", Version: "v1alpha1", Resource: "clusters"}
)

// Names in the kubesphere-system namespace.
const (
	Namespace        = "kubesphere-system"
	CCName           = "ks-installer"
	ConfigMapName    = "kubesphere-config"
	ConfigKey        = "kubesphere.yaml"
	SecretName       = "kubesphere-secret"
	KubeSphereVer    = "v3.4.1"
	TowerImage       = "kubesphere/tower:v0.2.1"
	KnobsNamespace   = "kube-system"
	KnobsConfigMap   = "ks-mc-sandbox"
	HostClusterName  = "host"
	ClusterFinalizer = "finalizer.cluster.kubesphere.io"
)

// Knobs (keys of ConfigMap kube-system/ks-mc-sandbox) steer the stand-in from tests.
const (
	KnobInstallerFail  = "installer.fail"  // "true": runs stop without writing status
	KnobInstallerDelay = "installer.delay" // duration of a run, default 2s
	KnobLoadBalancer   = "loadBalancer"    // "true": LoadBalancer Services get the node IP as ingress
)

const ccCRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: clusterconfigurations.installer.kubesphere.io
spec:
  group: installer.kubesphere.io
  names:
    kind: ClusterConfiguration
    listKind: ClusterConfigurationList
    plural: clusterconfigurations
    singular: clusterconfiguration
    shortNames: [cc]
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
`

const clusterCRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: clusters.cluster.kubesphere.io
spec:
  group: cluster.kubesphere.io
  names:
    kind: Cluster
    listKind: ClusterList
    plural: clusters
    singular: cluster
  scope: Cluster
  versions:
  - name: v1alpha1
    served: true
    storage: true
    additionalPrinterColumns:
    - {name: Federated, type: boolean, jsonPath: .spec.joinFederation}
    - {name: Provider, type: string, jsonPath: .spec.provider}
    - {name: Active, type: boolean, jsonPath: .spec.enable}
    - {name: Version, type: string, jsonPath: .status.kubernetesVersion}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              joinFederation: {type: boolean}
              enable: {type: boolean}
              provider: {type: string}
              externalKubeAPIEnabled: {type: boolean}
              connection:
                type: object
                properties:
                  type: {type: string, enum: [direct, proxy]}
                  kubernetesAPIEndpoint: {type: string}
                  kubesphereAPIEndpoint: {type: string}
                  kubeconfig: {type: string, format: byte}
                  token: {type: string}
                  kubernetesAPIServerPort: {type: integer}
                  kubesphereAPIServerPort: {type: integer}
                  externalKubernetesAPIEndpoint: {type: string}
          status:
            type: object
            properties:
              conditions:
                type: array
                items:
                  type: object
                  required: [type, status]
                  properties:
                    type: {type: string}
                    status: {type: string}
                    lastUpdateTime: {type: string, format: date-time}
                    lastTransitionTime: {type: string, format: date-time}
                    reason: {type: string}
                    message: {type: string}
              kubernetesVersion: {type: string}
              kubeSphereVersion: {type: string}
              nodeCount: {type: integer}
              zones: {type: array, items: {type: string}}
              region: {type: string}
              configz: {type: object, additionalProperties: {type: boolean}}
              uid: {type: string}
`

// defaultCC is the ClusterConfiguration of a fresh KubeSphere 3.4 minimal installation.
const defaultCC = `apiVersion: installer.kubesphere.io/v1alpha1
kind: ClusterConfiguration
metadata:
  name: ks-installer
  namespace: kubesphere-system
  labels:
    version: v3.4.1
spec:
  persistence:
    storageClass: ""
  authentication:
    jwtSecret: ""
  local_registry: ""
  etcd:
    monitoring: false
    endpointIps: localhost
    port: 2379
    tlsEnable: true
  common:
    core:
      console:
        enableMultiLogin: true
        port: 30880
        type: NodePort
    redis:
      enabled: false
      enableHA: false
      volumeSize: 2Gi
    openldap:
      enabled: false
      volumeSize: 2Gi
    minio:
      volumeSize: 20Gi
    monitoring:
      endpoint: http://prometheus-operated.kubesphere-monitoring-system.svc:9090
      GPUMonitoring:
        enabled: false
    gpu:
      kinds:
      - resourceName: "nvidia.com/gpu"
        resourceType: "GPU"
        default: true
    es:
      logMaxAge: 7
      elkPrefix: logstash
      basicAuth:
        enabled: false
        username: ""
        password: ""
      externalElasticsearchHost: ""
      externalElasticsearchPort: ""
  alerting:
    enabled: false
  auditing:
    enabled: false
  devops:
    enabled: false
  events:
    enabled: false
  logging:
    enabled: false
  metrics_server:
    enabled: false
  monitoring:
    storageClass: ""
    node_exporter:
      port: 9100
  multicluster:
    clusterRole: none
  network:
    networkpolicy:
      enabled: false
    ippool:
      type: none
    topology:
      type: none
  openpitrix:
    store:
      enabled: false
  servicemesh:
    enabled: false
  edgeruntime:
    enabled: false
  terminal:
    timeout: 600
`

// defaultConfig is kubesphere-config's kubesphere.yaml after installation (jwtSecret filled in).
const defaultConfig = `authentication:
  authenticateRateLimiterMaxTries: 10
  authenticateRateLimiterDuration: 10m0s
  loginHistoryRetentionPeriod: 168h
  maximumClockSkew: 10s
  multipleLogin: True
  kubectlImage: kubesphere/kubectl:v1.22.0
  jwtSecret: "JWT"
  oauthOptions:
    accessTokenMaxAge: 2h
    accessTokenInactivityTimeout: 30m
    clients:
    - name: kubesphere
      secret: kubesphere
      redirectURIs:
      - '*'
network:
  ippoolType: none
monitoring:
  endpoint: http://prometheus-operated.kubesphere-monitoring-system.svc:9090
  enableGPUMonitoring: false
terminal:
  image: alpine:3.14
  timeout: 600
gateway:
  watchesPath: /var/helm-charts/watches.yaml
  repository: kubesphere/nginx-ingress-controller
  tag: v1.3.1
  namespace: kubesphere-controls-system
multicluster:
  clusterRole: none
  enable: false
  agentImage: kubesphere/tower:v0.2.1
  proxyPublishService: tower.kubesphere-system.svc
`
