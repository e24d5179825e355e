"""Operator settings: one frozen object read once from the environment, plus kopf tuning.

Builders and `reconcile` never read the environment; they get a `Settings` argument.
The single `@kopf.on.startup` hook below is the only place that tunes the framework.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubeaccel_api.constants import GROUP, LABEL_MANAGED_BY
from kubeaccel_api.v1alpha1 import QUANTITY_PATTERN, RESOURCE_NAME_PATTERN
from kubeaccel_api.version import __version__
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kubeaccel_operator.manifests.common import MANAGED_BY

ENV_PREFIX = "KUBEACCEL_"
DEFAULT_IMAGE = f"ghcr.io/kubeaccel/runtime:{__version__}"
DEFAULT_OPTIMIZER_IMAGE = f"ghcr.io/kubeaccel/optimizer:{__version__}"
GPU_TAG_SUFFIX = "-gpu"
# (apiGroup, version, plural) of every kind of child the operator creates and watches.
OWNED_KINDS = (
    ("", "v1", "configmaps"),
    ("", "v1", "persistentvolumeclaims"),
    ("batch", "v1", "jobs"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io", "v1", "networkpolicies"),
)
# Shard pods are not the operator's (ReplicaSets own them) but say why a shard cannot
# start; they are watched read-only, selected by the labels the Deployments give them.
WATCHED_PODS = ("", "v1", "pods")


# Seconds between retries of a failed API request (kopf's own calls); ~5 minutes in all.
API_ERROR_BACKOFFS = (1.0, 2.0, 4.0, 8.0, 15.0, *(30.0,) * 9)


def image_repository(ref: str) -> str:
    """An image reference without its tag and digest (`reg:5000/a/b:1@sha256:..` -> `reg:5000/a/b`)."""
    name = ref.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def default_gpu_image(runtime_image: str) -> str:
    """The GPU flavour of a runtime image: same repository, tag `<version>-gpu`."""
    return f"{image_repository(runtime_image)}:{__version__}{GPU_TAG_SUFFIX}"


class SettingsError(ValueError):
    """The environment holds an invalid setting; the message names the variable."""


class Settings(BaseModel):
    """Operator settings; each field is read from `KUBEACCEL_<FIELD_NAME_UPPER>`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field(
        default=(), description="Namespaces to serve (comma-separated); empty = cluster-wide."
    )
    runtime_image: str = Field(default=DEFAULT_IMAGE, min_length=1, description="Serving image.")
    gpu_runtime_image: str = Field(
        default="",
        description="Image of shards and optimization Jobs that target a GPU; empty: the "
        "runtime image's repository with tag <version>-gpu.",
    )
    optimizer_image: str = Field(
        default=DEFAULT_OPTIMIZER_IMAGE,
        min_length=1,
        description="Image of optimization Jobs for CPU targets (a GPU target's Job runs on "
        "the image that will serve it).",
    )
    image_pull_policy: str = Field(
        default="IfNotPresent",
        pattern=r"^(Always|IfNotPresent|Never)$",
        description="imagePullPolicy of every container the operator creates.",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        pattern=RESOURCE_NAME_PATTERN,
        description="GPU extended resource when a resource does not name one explicitly.",
    )
    workers: int = Field(
        default=8, ge=1, le=256, description="Handler threads (concurrent reconciles)."
    )
    resync_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Seconds between full re-checks of every resource (0: only on events).",
    )
    pod_probes: str = Field(
        default="auto",
        pattern=r"^(auto|on|off)$",
        description="Read shard pods over HTTP (execution provider, rollout counters): auto = "
        "only when the operator runs in the cluster, on = always, off = never.",
    )
    rollout_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between re-checks of a resource whose rollout awaits its verdict.",
    )
    retry_delay: float = Field(
        default=15.0, gt=0, description="Seconds before retrying after a temporary error."
    )
    job_backoff_limit: int = Field(default=2, ge=0, le=20, description="Job backoffLimit.")
    job_deadline_seconds: int = Field(default=3600, ge=60, description="Job activeDeadlineSeconds.")
    job_ttl_seconds: int = Field(
        default=86400, ge=0, description="Job ttlSecondsAfterFinished (keeps logs readable)."
    )
    optimizer_cpu: str = Field(
        # A request, not a limit: the Job still uses every idle core. Small enough that the
        # Job, the shards and their rolling-update surge fit one 2-CPU node together.
        default="500m",
        pattern=QUANTITY_PATTERN,
        description="CPU request of the optimizer.",
    )
    optimizer_memory: str = Field(
        default="2Gi",
        pattern=QUANTITY_PATTERN,
        description="Memory request and limit of the optimizer.",
    )
    network_policy: bool = Field(
        default=False,
        description="Create shard NetworkPolicies for resources that do not say "
        "(spec.networkPolicy.enabled).",
    )
    peering_name: str | None = Field(
        default=None, description="kopf peering object name; empty = standalone (no peering)."
    )
    health_port: int = Field(
        default=8080, ge=1, le=65535, description="Port of kopf's liveness endpoint /healthz."
    )
    log_format: str = Field(
        default="json", pattern=r"^(json|plain|full)$", description="Log format."
    )
    verbose: bool = Field(default=False, description="Debug logging.")

    @model_validator(mode="before")
    @classmethod
    def _derive_gpu_image(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("gpu_runtime_image"):
            runtime = data.get("runtime_image") or DEFAULT_IMAGE
            return {**data, "gpu_runtime_image": default_gpu_image(str(runtime))}
        return data

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(sorted({part.strip() for part in value.split(",") if part.strip()}))
        return value

    @field_validator("peering_name", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def liveness_endpoint(self) -> str:
        """kopf's liveness endpoint URL (all interfaces, so the kubelet can probe it)."""
        return f"http://0.0.0.0:{self.health_port}/healthz"

    @property
    def standalone(self) -> bool:
        """Whether kopf runs without peering (one operator replica)."""
        return self.peering_name is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every `KUBEACCEL_*` variable; raise SettingsError naming the bad one."""
        raw = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            lines = []
            for err in exc.errors(include_url=False):
                field = str(err["loc"][0]) if err["loc"] else "?"
                lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
            raise SettingsError("invalid operator settings:\n" + "\n".join(lines)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env(os.environ)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Tune kopf: posting level, persistence keys, scanning, watch timeouts, workers."""
    cfg = get_settings()
    # Transition Events are posted explicitly with meaningful reasons; only warnings and
    # errors from logs become Events, so periodic re-checks do not spam `kubectl describe`.
    settings.posting.level = logging.WARNING
    # Keep kopf's bookkeeping under our own domain and out of .status (the CRD schema
    # has no room for status.kopf).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Resources are discovered once at startup (the CRD is installed before the operator),
    # which spares cluster-wide list/watch on CRDs and namespaces (least privilege).
    settings.scanning.disabled = True
    settings.execution.max_workers = cfg.workers
    # Children are watched to react to their changes; only ours, filtered by the server.
    for group, version, plural in (*OWNED_KINDS, WATCHED_PODS):
        settings.watching.label_selectors[group, version, plural] = (
            f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        )
    # Server-side watch timeouts make long-lived streams reconnect and re-list periodically.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # An API server that is briefly away (restart, upgrade, network blip) must not end the
    # operator. kopf's watch streams reconnect by themselves after connection errors, but
    # a call made while processing an event (patching the resource after a handler) that
    # still fails when kopf's retries run out stops the whole operator ("unrecoverable
    # error"). The default retries give up after ~54 s; these keep trying for ~5 minutes.
    settings.networking.error_backoffs = API_ERROR_BACKOFFS
    if cfg.peering_name is not None:
        settings.peering.name = cfg.peering_name
        settings.peering.mandatory = True
