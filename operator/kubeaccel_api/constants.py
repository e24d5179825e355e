"""Names shared by the operator, the runtime and the CRD: group, version, labels."""

from typing import Final

GROUP: Final = "kubeaccel.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "AcceleratedModel"
PLURAL: Final = "acceleratedmodels"
SINGULAR: Final = "acceleratedmodel"
SHORT_NAMES: Final = ("am",)
CATEGORIES: Final = ("kubeaccel", "ml")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# app.kubernetes.io/* labels plus our own selector keys.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MODEL: Final = f"{GROUP}/model"
LABEL_SHARD: Final = f"{GROUP}/shard"
LABEL_ARTIFACT: Final = f"{GROUP}/artifact-id"

# Where artifacts are laid out, inside the artifacts volume and on local disk.
MANIFEST_FILE: Final = "manifest.json"
REPORT_FILE: Final = "report.json"
SHARD_FILE_TEMPLATE: Final = "shard-{index}.onnx"
# Runtime container port for the Open Inference Protocol v2 HTTP API.
RUNTIME_PORT: Final = 8080
