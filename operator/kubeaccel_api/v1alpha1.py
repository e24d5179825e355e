"""The AcceleratedModel resource, version v1alpha1: spec (desired) and status (observed).

These pydantic models are the single source of truth: the CRD schema, the CLI's
`validate`, the operator and the runtime all read the resource through them.
Cross-field rules are written twice, side by side: as a pydantic validator (for the
CLI, the operator and the runtime) and as CEL in `x-kubernetes-validations` (so a real
API server rejects the same resource at apply time).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

SHA256_PATTERN = r"^[a-f0-9]{64}$"
URI_PATTERN = r"^(file|https?|s3|pvc)://.+"
# Kubernetes resource quantity (e.g. 500m, 2Gi, 1.5)
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# Extended resource names are prefixed (vendor domain / name).
RESOURCE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
TENSOR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:/-]*$"
# Samples generated from the contract when a data source names no file and no count.
GENERATED_SAMPLES = 64


def _cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def field_rule(field: str, message: str) -> PydanticCustomError:
    """A cross-field violation that names the offending child field.

    The CLI and the operator append `field` to the error location so the message reads
    e.g. `spec.optimization.quantization.calibration: is required when mode is static-int8`.
    """
    return PydanticCustomError("field_rule", "{field} {rule}", {"field": field, "rule": message})


class ApiModel(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """Serialize as the API server stores it (camelCase, absent fields omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- enums


class SourceFormat(StrEnum):
    """Serialized model formats kubeaccel can load (never pickle)."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORTED_PROGRAM = "torch-exported-program"


class PruningMethod(StrEnum):
    """Pruning flavours: zeroing single weights, or removing whole channels/rows."""

    MAGNITUDE = "magnitude"
    STRUCTURED = "structured"


class QuantizationMode(StrEnum):
    """Precision of the optimized model; `auto` searches and keeps the fastest in budget."""

    NONE = "none"
    DYNAMIC_INT8 = "dynamic-int8"
    STATIC_INT8 = "static-int8"
    FP16 = "fp16"
    AUTO = "auto"


class Objective(StrEnum):
    """What `auto` optimizes for among the candidates inside the accuracy budget."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"
    SIZE = "size"


class CalibrationMethod(StrEnum):
    """How static INT8 picks activation ranges from calibration samples."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class PartitionBalance(StrEnum):
    """What pipeline shards are balanced on."""

    MEMORY = "memory"
    COMPUTE = "compute"


class GraphOptimizationLevel(StrEnum):
    """onnxruntime graph optimization level applied offline to the artifact."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class ExecutionProvider(StrEnum):
    """onnxruntime execution provider; `auto` tries TensorRT, then CUDA, then CPU."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    CUDA = "cuda"
    CPU = "cpu"


class DType(StrEnum):
    """Tensor element types of the inputs/outputs contract."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    FLOAT64 = "float64"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


class StorageType(StrEnum):
    """Where optimization artifacts live."""

    PVC = "pvc"
    S3 = "s3"


class AccessMode(StrEnum):
    """PersistentVolumeClaim access modes."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


class TolerationOperator(StrEnum):
    """Kubernetes toleration operator."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Kubernetes taint effect."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


# --------------------------------------------------------------------------- source


class SourceSpec(ApiModel):
    """Where the trained model comes from, and the digest that proves it is the right one."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.sha256) || (has(self.allowUnverified) && self.allowUnverified)",
                    "sha256 is required unless allowUnverified is true",
                    ".sha256",
                )
            ]
        }
    )

    uri: str = Field(
        pattern=URI_PATTERN,
        max_length=2048,
        description="Model location: file://, http(s)://, s3:// or pvc://<claim>/<path>.",
    )
    format: SourceFormat = Field(
        default=SourceFormat.ONNX,
        description="Serialized format of the model. Pickled Python objects are never loaded.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="Lower-case hex SHA-256 of the model file; a mismatch fails the resource.",
    )
    allow_unverified: bool = Field(
        default=False,
        description="Accept a source without sha256 (not recommended outside development).",
    )

    @model_validator(mode="after")
    def _digest_required(self) -> SourceSpec:
        if self.sha256 is None and not self.allow_unverified:
            raise field_rule("sha256", "is required unless allowUnverified is true")
        return self


# --------------------------------------------------------------------------- optimization


class DataSource(ApiModel):
    """Sample inputs: an .npz/.npy file, or samples generated from the inputs contract."""

    uri: str | None = Field(
        default=None,
        pattern=URI_PATTERN,
        max_length=2048,
        description=(
            "An .npz (one array per input name, optional `labels`) or .npy file. "
            "Absent: samples are generated from the inputs contract with `seed`."
        ),
    )
    samples: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "Use at most this many samples. Absent: every sample the file holds, or "
            f"{GENERATED_SAMPLES} generated ones."
        ),
    )
    seed: int = Field(default=0, ge=0, description="Seed for generated samples.")


class PruningSpec(ApiModel):
    """Weight pruning applied before quantization."""

    sparsity: float = Field(
        ge=0.0,
        le=0.95,
        description="Fraction of weights (magnitude) or channels (structured) to remove, 0-0.95.",
    )
    method: PruningMethod = Field(
        default=PruningMethod.MAGNITUDE,
        description="magnitude zeroes single weights; structured removes whole channels/rows.",
    )


class CalibrationSpec(DataSource):
    """Calibration data for static INT8."""

    method: CalibrationMethod = Field(
        default=CalibrationMethod.MINMAX,
        description="Activation range estimator: minmax, entropy or percentile.",
    )


class QuantizationSpec(ApiModel):
    """Numeric precision of the optimized model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.mode != 'static-int8' || has(self.calibration)",
                    "calibration is required when mode is static-int8",
                    ".calibration",
                )
            ]
        }
    )

    mode: QuantizationMode = Field(
        default=QuantizationMode.NONE,
        description="none, dynamic-int8, static-int8, fp16 or auto (fastest inside the budget).",
    )
    calibration: CalibrationSpec | None = Field(
        default=None,
        description="Calibration samples; required for static-int8, optional for auto.",
    )
    per_channel: bool = Field(default=True, description="Per-channel weight scales for INT8.")
    keep_io_types: bool = Field(
        default=True, description="FP16: keep model inputs and outputs in FP32."
    )

    @model_validator(mode="after")
    def _calibration_required(self) -> QuantizationSpec:
        if self.mode is QuantizationMode.STATIC_INT8 and self.calibration is None:
            raise field_rule("calibration", "is required when mode is static-int8")
        return self


class PartitionSpec(ApiModel):
    """Pipeline partitioning of the graph into shards, each served by its own pods."""

    shards: int = Field(default=1, ge=1, le=16, description="Number of pipeline shards (1-16).")
    balance: PartitionBalance = Field(
        default=PartitionBalance.MEMORY,
        description="Balance shards by weight bytes (memory) or estimated FLOPs (compute).",
    )


class AccuracyBudget(ApiModel):
    """Largest acceptable difference between optimized and original model outputs."""

    max_abs_diff: float | None = Field(
        default=None, ge=0.0, description="Largest allowed absolute output difference."
    )
    max_mean_rel_error: float | None = Field(
        default=None, ge=0.0, description="Largest allowed mean relative output error."
    )
    min_top1_agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Classifiers: smallest allowed fraction of samples with the same top-1 class.",
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Labelled validation data: largest allowed drop in top-1 accuracy (0-1).",
    )


class OptimizationSpec(ApiModel):
    """What the optimization Job does to the model; changing it re-optimizes."""

    pruning: PruningSpec | None = Field(default=None, description="Pruning; absent means none.")
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="Quantization or FP16 conversion."
    )
    partition: PartitionSpec = Field(
        default_factory=PartitionSpec, description="Pipeline sharding of the graph."
    )
    accuracy_budget: AccuracyBudget = Field(
        default_factory=AccuracyBudget,
        description="An optimized model outside this budget is rejected and never deployed.",
    )
    validation: DataSource = Field(
        default_factory=DataSource,
        description="Validation inputs (and labels) the accuracy budget is checked on.",
    )
    graph_optimization_level: GraphOptimizationLevel = Field(
        default=GraphOptimizationLevel.EXTENDED,
        description="onnxruntime graph optimizations applied offline to the artifact.",
    )
    objective: Objective = Field(
        default=Objective.LATENCY,
        description=(
            "What quantization.mode auto picks among the candidates inside the accuracy "
            "budget (the original model is one of them): latency (lowest batch-1 p50), "
            "throughput (most items/s at the largest benchmarked batch) or size (fewest "
            "bytes). A candidate timed within 3 % of the best and at least 10 % smaller wins "
            "the tie."
        ),
    )


# --------------------------------------------------------------------------- runtime


class Toleration(ApiModel):
    """A Kubernetes toleration (e.g. for a GPU node taint)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.value) || !has(self.operator) || self.operator == 'Equal'",
                    "value must be empty when operator is Exists",
                    ".value",
                )
            ]
        }
    )

    key: str | None = Field(default=None, max_length=316, description="Taint key to tolerate.")
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL, description="Exists or Equal."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal).")
    effect: TaintEffect | None = Field(
        default=None, description="Taint effect to tolerate; absent matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="NoExecute only: how long the pod stays bound."
    )

    @model_validator(mode="after")
    def _value_needs_equal(self) -> Toleration:
        if self.value is not None and self.operator is TolerationOperator.EXISTS:
            raise field_rule("value", "must be empty when operator is Exists")
        return self


class ResourcesSpec(ApiModel):
    """Compute resources of one runtime pod (applied as requests and limits)."""

    cpu: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="CPU, e.g. 500m or 2."
    )
    memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Memory, e.g. 512Mi or 4Gi."
    )
    gpus: int = Field(default=0, ge=0, le=16, description="GPUs per pod (extended resource).")
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        pattern=RESOURCE_NAME_PATTERN,
        max_length=253,
        description="Extended resource name of the GPU, e.g. nvidia.com/gpu or amd.com/gpu.",
    )


class BatchingSpec(ApiModel):
    """Server-side dynamic batching of concurrent requests."""

    enabled: bool = Field(default=False, description="Merge concurrent requests into batches.")
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Largest merged batch.")
    max_delay_ms: float = Field(
        default=2.0, ge=0.0, le=1000.0, description="Longest wait for a batch to fill, in ms."
    )


class AutoscalingTarget(ApiModel):
    """What the autoscaler keeps each pod at."""

    cpu_utilization: int = Field(
        default=70,
        ge=1,
        le=1000,
        description=(
            "HorizontalPodAutoscaler: average CPU use in percent of the pod's CPU request "
            "(needs a metrics API such as metrics-server)."
        ),
    )
    inflight_requests: float = Field(
        default=8.0,
        gt=0,
        le=100_000,
        description=(
            "KEDA ScaledObject (used instead where KEDA is installed): infer requests in "
            "flight per pod."
        ),
    )


class AutoscalingSpec(ApiModel):
    """Scale each shard with its load; replaces `replicas` while set."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "minReplicas must not exceed maxReplicas",
                    ".minReplicas",
                )
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest pods per shard.")
    max_replicas: int = Field(ge=1, le=1000, description="Most pods per shard.")
    target: AutoscalingTarget = Field(
        default_factory=AutoscalingTarget, description="Per-pod load the autoscaler aims for."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise field_rule("minReplicas", "must not exceed maxReplicas")
        return self


class RuntimeSpec(ApiModel):
    """How the optimized shards are served; changing it only rolls the Deployments."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.executionProvider) || !(self.executionProvider in ['cuda', 'tensorrt'])"
                    " || (has(self.resources) && has(self.resources.gpus) && self.resources.gpus > 0)",
                    "resources.gpus must be at least 1 when executionProvider is cuda or tensorrt",
                    ".resources.gpus",
                ),
                _cel(
                    "!has(self.autoscaling) || (has(self.resources) && has(self.resources.cpu))",
                    "resources.cpu is required when autoscaling is set (CPU utilisation is "
                    "relative to the request)",
                    ".resources.cpu",
                ),
            ]
        }
    )

    replicas: int = Field(
        default=1, ge=0, le=1000, description="Pods per shard (ignored while autoscaling is set)."
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description=(
            "Scale every shard between minReplicas and maxReplicas: a HorizontalPodAutoscaler "
            "on CPU, or a KEDA ScaledObject on in-flight requests where KEDA is installed."
        ),
    )
    execution_provider: ExecutionProvider = Field(
        default=ExecutionProvider.AUTO,
        description="auto (TensorRT, then CUDA, then CPU), tensorrt, cuda or cpu.",
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="CPU, memory and GPUs per pod."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the runtime pods must run on."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Tolerations, e.g. for a GPU taint."
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes affinity; absent spreads replicas across nodes (preferred).",
    )
    runtime_class_name: str | None = Field(
        default=None, max_length=253, description="RuntimeClass, e.g. nvidia."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the runtime pods."
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec, description="Dynamic batching settings."
    )
    image: str | None = Field(default=None, max_length=1024, description="Runtime image override.")

    @model_validator(mode="after")
    def _gpu_provider_needs_gpu(self) -> RuntimeSpec:
        gpu_providers = (ExecutionProvider.CUDA, ExecutionProvider.TENSORRT)
        if self.execution_provider in gpu_providers and self.resources.gpus < 1:
            raise field_rule(
                "resources.gpus",
                "must be at least 1 when executionProvider is cuda or tensorrt",
            )
        if self.autoscaling is not None and self.resources.cpu is None:
            raise field_rule(
                "resources.cpu",
                "is required when autoscaling is set (CPU utilisation is relative to the request)",
            )
        return self


# --------------------------------------------------------------------------- contract


class ValueRange(ApiModel):
    """Inclusive range every element of a tensor must fall in."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.min) || !has(self.max) || self.min <= self.max",
                    "min must not exceed max",
                    ".min",
                )
            ]
        }
    )

    min: float | None = Field(default=None, description="Smallest allowed value.")
    max: float | None = Field(default=None, description="Largest allowed value.")

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise field_rule("min", "must not exceed max")
        return self


Dim = Annotated[int, Field(ge=-1)]


class TensorSpec(ApiModel):
    """One named tensor of the request/response contract the runtime enforces."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.shape.all(d, d != 0)", "dimensions must be -1 (dynamic) or >= 1", ".shape"
                )
            ]
        }
    )

    name: str = Field(
        min_length=1, max_length=256, pattern=TENSOR_NAME_PATTERN, description="Tensor name."
    )
    dtype: DType = Field(description="Element type, e.g. float32 or int64.")
    shape: list[Dim] = Field(
        max_length=8, description="Dimensions; -1 marks a dynamic one (usually the batch)."
    )
    range: ValueRange | None = Field(default=None, description="Allowed value range.")
    reject_non_finite: bool | None = Field(
        default=None,
        description="Reject NaN/Inf. Default: true for inputs, false for outputs (counted only).",
    )

    @model_validator(mode="after")
    def _no_zero_dims(self) -> TensorSpec:
        if any(d == 0 for d in self.shape):
            raise field_rule("shape", "dimensions must be -1 (dynamic) or >= 1")
        return self


class LimitsSpec(ApiModel):
    """Request limits the runtime enforces before running anything."""

    max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        le=2**31 - 1,
        description="Largest accepted request body in bytes (413 above).",
    )
    max_batch: int = Field(default=64, ge=1, le=65536, description="Largest accepted batch dim.")


class ModelContract(ApiModel):
    """The inputs and outputs a model declares (names, dtypes, shapes; -1 is dynamic)."""

    inputs: list[TensorSpec] = Field(
        min_length=1, max_length=64, description="The model's inputs, in order."
    )
    outputs: list[TensorSpec] = Field(
        min_length=1, max_length=64, description="The model's outputs, in order."
    )


# --------------------------------------------------------------------------- storage


class PvcStorage(ApiModel):
    """The PersistentVolumeClaim that holds artifacts."""

    size: str = Field(default="2Gi", pattern=QUANTITY_PATTERN, description="Requested size.")
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="StorageClass; absent uses the default class."
    )
    access_mode: AccessMode = Field(
        default=AccessMode.READ_WRITE_ONCE,
        description="ReadWriteMany lets shards on several nodes share artifacts.",
    )
    claim_name: str | None = Field(
        default=None, max_length=253, description="Use this existing claim instead of creating one."
    )


class S3Storage(ApiModel):
    """An S3-compatible bucket that holds artifacts.

    The Job uploads each artifact to s3://<bucket>/<prefix>/<model>/<artifact-id>/ and every
    shard pod downloads it (checking each SHA-256) before serving.
    """

    bucket: str = Field(min_length=3, max_length=63, description="Bucket name.")
    prefix: str = Field(default="kubeaccel", max_length=1024, description="Key prefix.")
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^/?#]+/?$",
        description="Endpoint of an S3-compatible server, e.g. http://minio.storage:9000 "
        "(absent: AWS S3).",
    )
    region: str | None = Field(
        default=None, max_length=64, description="Region (absent: the server's default)."
    )
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description="Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_SESSION_TOKEN); absent: anonymous requests.",
    )


class StorageSpec(ApiModel):
    """Where artifacts (shards, manifest, report) are written and read from."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.type) || self.type != 's3' || has(self.s3)",
                    "s3 is required when type is s3",
                    ".s3",
                )
            ]
        }
    )

    type: StorageType = Field(default=StorageType.PVC, description="pvc (default) or s3.")
    pvc: PvcStorage = Field(default_factory=PvcStorage, description="PVC settings.")
    s3: S3Storage | None = Field(default=None, description="S3 settings (type s3).")

    @model_validator(mode="after")
    def _s3_settings(self) -> StorageSpec:
        if self.type is StorageType.S3 and self.s3 is None:
            raise field_rule("s3", "is required when type is s3")
        return self


# --------------------------------------------------------------------------- rollout

MAX_CANARY_STEPS = 8


def _increasing(field: str, max_items: int) -> str:
    """CEL: `self.<field>` is strictly increasing (portable CEL has no isSorted())."""
    pairs = [
        f"(size(self.{field}) <= {i + 1} || self.{field}[{i}] < self.{field}[{i + 1}])"
        for i in range(max_items - 1)
    ]
    return f"!has(self.{field}) || (" + " && ".join(pairs) + ")"


class RolloutStrategy(StrEnum):
    """How a new artifact replaces the serving one."""

    REPLACE = "replace"
    SHADOW = "shadow"
    CANARY = "canary"


class ShadowSpec(ApiModel):
    """Shadow: the candidate gets a copy of live requests; clients only see the serving chain."""

    mirror_percent: float = Field(
        default=10.0,
        gt=0,
        le=100,
        description="Share of live requests (percent) also sent to the candidate and compared.",
    )
    min_requests: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="Requests compared before a verdict; fewer within maxDurationSeconds rolls back.",
    )
    max_duration_seconds: int = Field(
        default=900,
        ge=10,
        le=7 * 86400,
        description="Longest comparison (from the candidate being Ready) before a verdict.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest share of mirrored requests the candidate may fail (error, timeout).",
    )


class CanarySpec(ApiModel):
    """Canary: a growing share of live traffic is answered by the candidate."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    _increasing("steps", MAX_CANARY_STEPS),
                    "steps must be strictly increasing",
                    ".steps",
                ),
                _cel(
                    "!has(self.steps) || !has(self.maxDurationSeconds)"
                    " || !has(self.stepIntervalSeconds)"
                    " || self.maxDurationSeconds >= size(self.steps) * self.stepIntervalSeconds",
                    "maxDurationSeconds must cover every step (steps x stepIntervalSeconds)",
                    ".maxDurationSeconds",
                ),
            ]
        }
    )

    steps: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default=[10, 50],
        min_length=1,
        max_length=MAX_CANARY_STEPS,
        description="Candidate weights in percent (1-99), strictly increasing; promotion follows "
        "the last one.",
    )
    step_interval_seconds: int = Field(
        default=60, ge=5, le=86400, description="Time at each weight before it is judged."
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        le=10_000_000,
        description="Requests the candidate must answer at each step before it is judged.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest amount (0-1) by which the candidate's error rate may exceed the "
        "serving chain's.",
    )
    max_latency_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="Largest candidate / serving ratio of median latency.",
    )
    latency_tolerance_ms: float = Field(
        default=5.0,
        ge=0,
        le=60_000,
        description="Median latency may also exceed the serving chain's by this much (covers "
        "the extra hop of the split).",
    )
    max_duration_seconds: int = Field(
        default=1800,
        ge=10,
        le=7 * 86400,
        description="Longest canary (from the candidate being Ready); unfinished steps roll back.",
    )

    @model_validator(mode="after")
    def _steps(self) -> CanarySpec:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise field_rule("steps", "must be strictly increasing")
        if self.max_duration_seconds < len(self.steps) * self.step_interval_seconds:
            raise field_rule(
                "maxDurationSeconds",
                "must cover every step (steps x stepIntervalSeconds)",
            )
        return self


class RolloutSpec(ApiModel):
    """How a new artifact (a changed source or optimization) earns its traffic."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.shadow) || (has(self.strategy) && self.strategy == 'shadow')",
                    "shadow settings need strategy shadow",
                    ".shadow",
                ),
                _cel(
                    "!has(self.canary) || (has(self.strategy) && self.strategy == 'canary')",
                    "canary settings need strategy canary",
                    ".canary",
                ),
                _cel(
                    "!has(self.budget) || (has(self.strategy) && self.strategy == 'shadow')",
                    "budget needs strategy shadow (canary is judged on errors and latency)",
                    ".budget",
                ),
            ]
        }
    )

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.REPLACE,
        description="replace: roll the shards in place (default); shadow: compare the candidate "
        "on mirrored live requests; canary: shift live traffic to it in steps.",
    )
    shadow: ShadowSpec | None = Field(default=None, description="Shadow settings.")
    canary: CanarySpec | None = Field(default=None, description="Canary settings.")
    budget: AccuracyBudget | None = Field(
        default=None,
        description="Shadow: how close the candidate's outputs must stay to the serving chain's "
        "(maxAbsDiff, maxMeanRelError, minTop1Agreement); absent uses "
        "optimization.accuracyBudget.",
    )
    ready_timeout_seconds: int = Field(
        default=600,
        ge=10,
        le=86400,
        description="A candidate not Ready this long after it was created is rolled back.",
    )

    @model_validator(mode="after")
    def _settings_match_strategy(self) -> RolloutSpec:
        if self.shadow is not None and self.strategy is not RolloutStrategy.SHADOW:
            raise field_rule("shadow", "settings need strategy shadow")
        if self.canary is not None and self.strategy is not RolloutStrategy.CANARY:
            raise field_rule("canary", "settings need strategy canary")
        if self.budget is not None and self.strategy is not RolloutStrategy.SHADOW:
            raise field_rule(
                "budget", "needs strategy shadow (canary is judged on errors and latency)"
            )
        return self

    @property
    def shadow_settings(self) -> ShadowSpec:
        """The shadow settings in force (defaults when absent)."""
        return self.shadow or ShadowSpec()

    @property
    def canary_settings(self) -> CanarySpec:
        """The canary settings in force (defaults when absent)."""
        return self.canary or CanarySpec()


# Budget figures a live comparison can measure (there are no labels on live traffic).
LIVE_BUDGET_FIELDS = ("maxAbsDiff", "maxMeanRelError", "minTop1Agreement")


def _has_live_budget(path: str) -> str:
    return "(" + " || ".join(f"has({path}.{f})" for f in LIVE_BUDGET_FIELDS) + ")"


# --------------------------------------------------------------------------- network


class NetworkPolicySpec(ApiModel):
    """Ingress NetworkPolicies around the shards: only clients reach shard 0 (the model's
    Service), only shard i-1 reaches shard i, and only on the serving port.

    Enforced only where the cluster's network plugin implements NetworkPolicy.
    """

    enabled: bool | None = Field(
        default=None,
        description="Create the policies; absent follows the operator's default "
        "(Helm value networkPolicy.enabled).",
    )
    clients: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=32,
        description="NetworkPolicy peers (podSelector, namespaceSelector, ipBlock) allowed "
        "to call the model; absent: pods in the model's namespace labelled "
        "kubeaccel.io/client=true.",
    )


# --------------------------------------------------------------------------- spec


class AcceleratedModelSpec(ApiModel):
    """Desired state: a model, how to optimize it, and how to serve it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.inputs) || self.inputs.all(a, self.inputs.exists_one(b, b.name == a.name))",
                    "input names must be unique",
                    ".inputs",
                ),
                _cel(
                    "!has(self.outputs) || self.outputs.all(a, self.outputs.exists_one(b, b.name == a.name))",
                    "output names must be unique",
                    ".outputs",
                ),
                _cel(
                    "has(self.inputs) || !has(self.source.format) || self.source.format != 'torchscript'",
                    "inputs is required when source.format is torchscript "
                    "(TorchScript files do not record input dtypes and shapes)",
                    ".inputs",
                ),
                _cel(
                    "!has(self.rollout) || !has(self.rollout.strategy)"
                    " || self.rollout.strategy != 'shadow'"
                    f" || (has(self.rollout.budget) && {_has_live_budget('self.rollout.budget')})"
                    " || (!has(self.rollout.budget) && has(self.optimization)"
                    " && has(self.optimization.accuracyBudget)"
                    f" && {_has_live_budget('self.optimization.accuracyBudget')})",
                    "shadow needs a budget with maxAbsDiff, maxMeanRelError or minTop1Agreement "
                    "(in rollout.budget, else optimization.accuracyBudget)",
                    ".rollout.budget",
                ),
            ]
        }
    )

    source: SourceSpec = Field(description="The trained model to optimize and serve.")
    optimization: OptimizationSpec = Field(
        default_factory=OptimizationSpec, description="Optimization passes and accuracy budget."
    )
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="Serving settings.")
    inputs: list[TensorSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description=(
            "Input contract: every request is checked. Absent: the optimization Job reads it "
            "from the model (status.optimization.contract) and the server enforces that."
        ),
    )
    outputs: list[TensorSpec] | None = Field(
        default=None, max_length=64, description="Output contract; absent uses the model's."
    )
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Request limits.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Artifact storage.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How a new artifact replaces the serving one: replace, shadow or canary.",
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description="Who may reach the shards (ingress NetworkPolicies); off unless enabled.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> AcceleratedModelSpec:
        for field, tensors in (("inputs", self.inputs or []), ("outputs", self.outputs or [])):
            names = [t.name for t in tensors]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise field_rule(field, f"names must be unique (repeated: {', '.join(dupes)})")
        if self.rollout.strategy is RolloutStrategy.SHADOW and not live_budget(
            self.comparison_budget
        ):
            raise field_rule(
                "rollout.budget",
                "shadow needs a budget with maxAbsDiff, maxMeanRelError or minTop1Agreement "
                "(in rollout.budget, else optimization.accuracyBudget)",
            )
        return self

    @model_validator(mode="after")
    def _torchscript_needs_inputs(self) -> AcceleratedModelSpec:
        if self.inputs is None and self.source.format is SourceFormat.TORCHSCRIPT:
            raise field_rule(
                "inputs",
                "is required when source.format is torchscript "
                "(TorchScript files do not record input dtypes and shapes)",
            )
        return self

    @property
    def comparison_budget(self) -> AccuracyBudget:
        """The budget a shadow rollout compares with: rollout.budget, else the optimizer's."""
        return self.rollout.budget or self.optimization.accuracy_budget


def live_budget(budget: AccuracyBudget) -> bool:
    """Whether `budget` sets a figure that live traffic can measure (no labels there)."""
    return any(
        v is not None
        for v in (budget.max_abs_diff, budget.max_mean_rel_error, budget.min_top1_agreement)
    )


# --------------------------------------------------------------------------- status


class Phase(StrEnum):
    """Coarse lifecycle phase, for humans and printer columns."""

    PENDING = "Pending"
    OPTIMIZING = "Optimizing"
    DEPLOYING = "Deploying"
    ROLLING_OUT = "RollingOut"
    READY = "Ready"
    FAILED = "Failed"
    DEGRADED = "Degraded"


class ConditionType(StrEnum):
    """Condition types and what True means.

    Validated: the spec passed every rule (False: invalid spec, see message).
    Optimized: an artifact for the current source+optimization exists and is in budget
      (False: the Job failed or the budget was exceeded; Unknown: the Job is running).
    Deployed: every shard Deployment and Service exists for the current artifact.
    Ready: all of the above and every shard has its replicas available.
    Degraded (shadow and canary only): True when the spec's artifact was rolled back and an
      older one keeps serving (the message has the figures); False once the spec's artifact
      serves.
    """

    VALIDATED = "Validated"
    OPTIMIZED = "Optimized"
    DEPLOYED = "Deployed"
    READY = "Ready"
    DEGRADED = "Degraded"


class ConditionStatus(StrEnum):
    """Kubernetes condition status."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition."""

    type: ConditionType = Field(description="Condition type.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed for."
    )


class CandidateReport(ApiModel):
    """Figures of one configuration the optimizer measured."""

    config: str = Field(description="Configuration, e.g. prune0.5+static-int8.")
    latency_ms: float | None = Field(default=None, description="Median latency at batch 1, ms.")
    throughput: float | None = Field(
        default=None, description="Items per second at the largest benchmarked batch."
    )
    bytes: int | None = Field(default=None, description="Model size in bytes.")
    max_abs_diff: float | None = Field(default=None, description="Max abs diff vs the original.")
    top1_agreement: float | None = Field(default=None, description="Top-1 agreement, 0-1.")
    accuracy: float | None = Field(default=None, description="Labelled top-1 accuracy, 0-1.")
    within_budget: bool = Field(description="Whether it passed the accuracy budget.")
    pareto: bool | None = Field(
        default=None,
        description=(
            "Inside the budget and not beaten on every one of size, batch-1 latency, "
            "throughput and accuracy by another candidate inside the budget."
        ),
    )
    chosen: bool = Field(default=False, description="Whether it was deployed.")


class Interval(ApiModel):
    """A measured figure with its 95 % confidence interval."""

    value: float = Field(description="The figure measured on the validation samples.")
    low: float = Field(description="Lower end of the 95 % confidence interval.")
    high: float = Field(description="Upper end of the 95 % confidence interval.")


class AccuracyGateStatus(ApiModel):
    """How sure the accuracy gate is: intervals, sample count, and whether the data decide."""

    samples: int = Field(ge=0, description="Validation samples both models were run on.")
    confidence: float = Field(default=0.95, description="Confidence level of the intervals.")
    accuracy_drop: Interval | None = Field(
        default=None,
        description="Labelled top-1 accuracy lost (before - after), paired over the same samples.",
    )
    top1_agreement: Interval | None = Field(
        default=None, description="Fraction of samples whose top-1 class is unchanged."
    )
    resolved: bool = Field(
        description=(
            "False when an interval contains its budget's limit: the samples cannot tell "
            "whether the model is inside the budget (see message)."
        )
    )
    message: str | None = Field(
        default=None, description="Why the data cannot resolve the budget, and what would."
    )


class OptimizationStatus(ApiModel):
    """Summary of the optimization that produced the current artifact."""

    artifact_id: str = Field(description="Hash of source + optimization + kubeaccel version.")
    bytes_before: int | None = Field(default=None, description="Original model size in bytes.")
    bytes_after: int | None = Field(default=None, description="Optimized size in bytes.")
    size_ratio: float | None = Field(default=None, description="bytesAfter / bytesBefore.")
    latency_before_ms: float | None = Field(default=None, description="Original p50 latency, ms.")
    latency_after_ms: float | None = Field(default=None, description="Optimized p50 latency, ms.")
    speedup: float | None = Field(default=None, description="latencyBefore / latencyAfter.")
    accuracy_before: float | None = Field(default=None, description="Labelled accuracy before.")
    accuracy_after: float | None = Field(default=None, description="Labelled accuracy after.")
    max_abs_diff: float | None = Field(default=None, description="Max abs output diff.")
    top1_agreement: float | None = Field(default=None, description="Top-1 agreement, 0-1.")
    chosen: str | None = Field(default=None, description="The configuration that was kept.")
    objective: Objective | None = Field(
        default=None, description="The objective auto chose the configuration for."
    )
    gate: AccuracyGateStatus | None = Field(
        default=None,
        description="Confidence intervals and sample count behind the accuracy figures.",
    )
    execution_provider: str | None = Field(
        default=None, description="Execution provider the artifact was validated on."
    )
    candidates: list[CandidateReport] | None = Field(
        default=None, description="Every configuration measured (auto mode)."
    )
    contract: ModelContract | None = Field(
        default=None,
        description=(
            "Inputs and outputs read from the model; the server enforces them where "
            "spec.inputs/spec.outputs are absent."
        ),
    )


class ShardStatus(ApiModel):
    """Observed state of one pipeline shard."""

    index: int = Field(ge=0, description="Shard position in the pipeline.")
    deployment: str = Field(description="Deployment name.")
    service: str = Field(description="Service name.")
    replicas: int = Field(default=0, ge=0, description="Desired replicas.")
    ready_replicas: int = Field(default=0, ge=0, description="Available replicas.")
    execution_provider: str | None = Field(
        default=None,
        description=(
            "onnxruntime execution provider the shard's ready pods report using, e.g. "
            "CPUExecutionProvider after an `auto` fallback on a node without a usable GPU "
            "(comma-separated when pods differ). Read from the pods' /metrics when the "
            "operator runs in the cluster."
        ),
    )


class RolloutPhase(StrEnum):
    """Where a shadow or canary rollout stands."""

    STARTING = "Starting"  # candidate shards created, waiting for them to be Ready
    SHADOWING = "Shadowing"  # live requests mirrored to the candidate and compared
    CANARY = "Canary"  # a share of live requests answered by the candidate
    PROMOTED = "Promoted"  # the candidate serves; the previous chain was removed
    ROLLED_BACK = "RolledBack"  # the candidate was removed; the previous chain serves

    @property
    def finished(self) -> bool:
        """Whether the rollout has reached its verdict."""
        return self in (RolloutPhase.PROMOTED, RolloutPhase.ROLLED_BACK)


class RolloutStatus(ApiModel):
    """Progress of the latest shadow or canary rollout; survives an operator restart."""

    strategy: RolloutStrategy = Field(description="shadow or canary.")
    phase: RolloutPhase = Field(description="Starting, Shadowing, Canary, Promoted or RolledBack.")
    candidate_artifact_id: str = Field(description="The artifact earning its traffic.")
    baseline_artifact_id: str = Field(description="The artifact serving when the rollout began.")
    candidate_chain: str = Field(description="Chain (a or b) the candidate's shards run in.")
    generation: int = Field(ge=0, description="metadata.generation the rollout started at.")
    started_at: datetime = Field(description="When the candidate's shards were created.")
    analysis_started_at: datetime | None = Field(
        default=None, description="When the candidate was Ready and began to get traffic."
    )
    finished_at: datetime | None = Field(default=None, description="When the verdict was made.")
    step: int | None = Field(default=None, ge=0, description="Canary: index of the current step.")
    weight: float | None = Field(
        default=None, description="Share of live requests (percent) routed or mirrored now."
    )
    step_started_at: datetime | None = Field(
        default=None, description="Canary: when the current step began."
    )
    step_baseline: int | None = Field(
        default=None, ge=0, description="Canary: candidate requests counted when the step began."
    )
    requests_compared: int | None = Field(
        default=None, ge=0, description="Shadow: requests answered by both chains and compared."
    )
    requests_mirrored: int | None = Field(
        default=None, ge=0, description="Shadow: requests sent to the candidate."
    )
    top1_agreement: float | None = Field(
        default=None, description="Shadow: share of compared requests with the same top-1 class."
    )
    max_abs_diff: float | None = Field(
        default=None, description="Shadow: largest absolute output difference so far."
    )
    mean_rel_error: float | None = Field(
        default=None, description="Shadow: relative L1 output error so far (worst output)."
    )
    candidate_requests: int | None = Field(
        default=None, ge=0, description="Canary: requests routed to the candidate."
    )
    candidate_errors: int | None = Field(
        default=None, ge=0, description="Requests the candidate failed (errors, timeouts)."
    )
    serving_requests: int | None = Field(
        default=None, ge=0, description="Canary: requests answered by the serving chain."
    )
    serving_errors: int | None = Field(
        default=None, ge=0, description="Canary: requests the serving chain failed."
    )
    candidate_p50_ms: float | None = Field(
        default=None, description="Canary: median latency of the candidate, ms."
    )
    serving_p50_ms: float | None = Field(
        default=None, description="Canary: median latency of the serving chain, ms."
    )
    verdict: str | None = Field(
        default=None,
        description="CamelCase reason of the outcome, e.g. WithinBudget, BudgetExceeded.",
    )
    message: str | None = Field(default=None, description="The outcome or progress, with figures.")


class AcceleratedModelStatus(ApiModel):
    """Observed state, written only by the operator."""

    phase: Phase = Field(default=Phase.PENDING, description="Coarse lifecycle phase.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Validated, Optimized, Deployed, Ready, Degraded."
    )
    artifact_id: str | None = Field(default=None, description="Artifact the current spec asks for.")
    deployed_artifact_id: str | None = Field(
        default=None, description="Artifact the running shards serve."
    )
    optimization: OptimizationStatus | None = Field(
        default=None, description="Figures of the current artifact's optimization."
    )
    shards: list[ShardStatus] | None = Field(default=None, description="Per-shard state.")
    ready_shards: str | None = Field(default=None, description="Ready/total shards, e.g. 2/2.")
    endpoint: str | None = Field(
        default=None, description="In-cluster URL of the Open Inference Protocol v2 endpoint."
    )
    message: str | None = Field(default=None, description="Last notable event, for humans.")
    rollout: RolloutStatus | None = Field(
        default=None, description="The latest shadow or canary rollout and its verdict."
    )


# --------------------------------------------------------------------------- resource

NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Children are named "<name>-shard-<i>" / "<name>-opt-<id>": keep room under 63 chars.
MAX_NAME_LENGTH = 40


class ObjectMeta(BaseModel):
    """The parts of metadata kubeaccel reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(max_length=MAX_NAME_LENGTH, description="Resource name.")
    namespace: str | None = Field(default=None, description="Namespace.")
    generation: int | None = Field(default=None, description="Spec generation.")
    uid: str | None = Field(default=None, description="Unique id.")

    @model_validator(mode="after")
    def _dns_label(self) -> ObjectMeta:
        if not re.match(NAME_PATTERN, self.name):
            raise field_rule(
                "name",
                "must be a DNS-1035 label (lower-case letters, digits, '-'; starts with a letter)",
            )
        return self


class AcceleratedModel(BaseModel):
    """A whole AcceleratedModel object as stored by the API server."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    api_version: Literal["kubeaccel.io/v1alpha1"] = Field(description="API version.")
    kind: Literal["AcceleratedModel"] = Field(description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: AcceleratedModelSpec = Field(description="Desired state.")
    status: AcceleratedModelStatus | None = Field(default=None, description="Observed state.")
