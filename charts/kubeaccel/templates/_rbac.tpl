{{/*
The operator's permissions, least privilege. tests/test_charts compares the union of these
rules with kubeaccel_operator.kube.REQUIRED_PERMISSIONS (every API call the operator and kopf
make): keep both in step, with exactly the same verbs.

kopf runs with resource scanning disabled and standalone (one replica, no peering), so it
needs no cluster-scoped access at all (no CRDs, namespaces or clusterkopfpeerings): every
rule is on namespaced resources, granted by one ClusterRole (watchNamespaces empty) or by a
Role in each watched namespace.
*/}}

{{/*
Framework (kopf): it watches the resources it handles, patches them (its progress
annotations) and their status, and posts Events about them.
*/}}
{{- define "kubeaccel.rules.framework" -}}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["kubeaccel.io"]
  resources: ["acceleratedmodels"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["kubeaccel.io"]
  resources: ["acceleratedmodels/status"]
  verbs: ["patch"]
{{- end }}

{{/*
Application (the kubeaccel reconciler in kubeaccel_operator.kube): children are written with
server-side apply (patch) by deterministic name and observed by label (list). Every kind of
child is also watched, so a finished Job, a Deployment losing availability or a child edited
or deleted by hand triggers a reconcile of its owner at once.
*/}}
{{- define "kubeaccel.rules.application" -}}
# Re-reads the resource before acting on it.
- apiGroups: ["kubeaccel.io"]
  resources: ["acceleratedmodels"]
  verbs: ["get"]
# The spec handed to the optimization Job.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The artifacts volume (created once; never deleted by hand, its owner reference does it).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The optimization Job; a new artifact gets a new Job.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Pods, read only: the Job's pod's termination message carries the optimization summary
# (or why it failed); shard pods say why a shard cannot start (crash loop, image pull),
# and during a shadow/canary rollout the serving chain's shard-0 pods give their IPs (to
# read their counters).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# One Deployment and Service per shard, the model's main Service, and a
# PodDisruptionBudget for shards with more than one replica.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.runtime.autoscaling: an HPA per shard (not watched: it rewrites its status every
# 15 s), or a KEDA ScaledObject where KEDA is installed (found through API discovery).
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "create", "patch", "delete"]
# The opt-in NetworkPolicy of each shard: only clients reach shard 0, only shard i-1
# reaches shard i (spec.networkPolicy, default from networkPolicy.enabled).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
