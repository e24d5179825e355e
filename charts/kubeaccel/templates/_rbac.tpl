{{/*
The operator's permissions, least privilege. tests/test_charts compares the union of these
rules with kubeaccel_operator.kube.REQUIRED_PERMISSIONS (every API call the operator and kopf
make): keep both in step, with exactly the same verbs.

Rules on cluster-scoped resources always live in a ClusterRole; rules on namespaced
resources live in the same ClusterRole (watchNamespaces empty) or in a Role in each watched
namespace.
*/}}

{{/*
Framework, cluster-scoped: kopf observes CRDs (to find the AcceleratedModel resource as it is
served) and namespaces (to follow the watched set as namespaces come and go).
*/}}
{{- define "kubeaccel.rules.framework.cluster" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Framework, namespaced: kopf posts Events on the objects it handles. The operator runs one
replica in standalone mode (no peering), so no kopfpeerings access.
*/}}
{{- define "kubeaccel.rules.framework.namespaced" -}}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Application, namespaced: what the reconciler reads and writes.
*/}}
{{- define "kubeaccel.rules.application" -}}
# The resources it handles; kopf patches annotations (progress) and status.
- apiGroups: ["kubeaccel.io"]
  resources: ["acceleratedmodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubeaccel.io"]
  resources: ["acceleratedmodels/status"]
  verbs: ["get", "patch"]
# The optimization Job; Jobs are immutable, a new artifact gets a new Job.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The Job's pod: its termination message carries the optimization summary.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# The spec handed to the Job, and the artifacts volume.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create"]
# One Deployment and Service per shard, plus the model's main Service.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Shards with more than one replica get a PodDisruptionBudget.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
