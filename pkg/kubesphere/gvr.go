package kubesphere

// GroupVersionResource has exactly the fields of k8s.io/apimachinery's schema.GroupVersionResource
// and is an unnamed struct type, so the GVRs below are assignable to schema.GroupVersionResource
// without a conversion (dynamic.Interface.Resource(kubesphere.ClusterGVR) compiles) while this
// package imports no Kubernetes module. For schema's methods convert first:
// schema.GroupVersionResource(kubesphere.ClusterGVR).GroupResource().
type GroupVersionResource = struct {
	Group    string
	Version  string
	Resource string
}

// ClusterGVR is KubeSphere's cluster-scoped Cluster resource (kubesphere/kubesphere v3.4.1
// pkg/apis/cluster/v1alpha1).
var ClusterGVR = GroupVersionResource{Group: "cluster.kubesphere.io", Version: "v1alpha1", Resource: "clusters"}

// ClusterConfigurationGVR is the resource of the ks-installer ClusterConfiguration (namespaced).
var ClusterConfigurationGVR = GroupVersionResource{Group: "installer.kubesphere.io", Version: "v1alpha1", Resource: "clusterconfigurations"}

// ClusterConfigurationAPIVersion is the apiVersion of a ClusterConfiguration object.
const ClusterConfigurationAPIVersion = "installer.kubesphere.io/v1alpha1"
