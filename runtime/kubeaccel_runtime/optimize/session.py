"""onnxruntime sessions and shard chains: how the optimizer runs a model or a pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from kubeaccel_api.v1alpha1 import GraphOptimizationLevel
from onnx import ModelProto

import kubeaccel_runtime.ort_guard  # noqa: F401 (refuses a cpu+gpu mixed install)
from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.trt import CPU, provider_specs

ORT_LEVEL = {
    GraphOptimizationLevel.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    GraphOptimizationLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    GraphOptimizationLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    GraphOptimizationLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionSettings:
    """How every session the optimizer creates is configured."""

    providers: tuple[str, ...] = (CPU,)
    threads: int = 1
    level: GraphOptimizationLevel = GraphOptimizationLevel.ALL
    # TensorRT options (precision flags, profile, engine cache) when TensorRT is listed.
    trt_options: Mapping[str, str] | None = None

    def with_trt(self, options: Mapping[str, str] | None) -> SessionSettings:
        """The same settings with other TensorRT options."""
        return replace(self, trt_options=options)


def session_options(
    settings: SessionSettings, *, profile_prefix: Path | None = None
) -> ort.SessionOptions:
    """Session options: fixed thread count, no spinning (sessions share cores), the level."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ORT_LEVEL[settings.level]
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    return opts


def create(
    model: ModelProto | bytes, settings: SessionSettings, *, profile_prefix: Path | None = None
) -> ort.InferenceSession:
    """An InferenceSession for an in-memory model."""
    blob = model if isinstance(model, bytes) else onnx_io.serialize(model)
    return ort.InferenceSession(
        blob,
        sess_options=session_options(settings, profile_prefix=profile_prefix),
        providers=provider_specs(settings.providers, settings.trt_options),
    )


def effective_provider(session: ort.InferenceSession) -> str:
    """The provider a session really uses first.

    onnxruntime-gpu lists CUDA even without a GPU and silently falls back to CPU, so only
    a created session tells which provider runs.
    """
    return str(session.get_providers()[0])


class Chain:
    """Sessions run one after another; each takes what it needs from earlier outputs."""

    def __init__(
        self, sessions: Sequence[ort.InferenceSession], output_names: Sequence[str]
    ) -> None:
        self.sessions = list(sessions)
        self.output_names = list(output_names)
        self._inputs = [[i.name for i in s.get_inputs()] for s in self.sessions]
        self._outputs = [[o.name for o in s.get_outputs()] for s in self.sessions]

    @classmethod
    def of(cls, models: Sequence[ModelProto], settings: SessionSettings) -> Chain:
        """A chain over in-memory models; the last one's outputs are the chain's outputs."""
        sessions = [create(m, settings) for m in models]
        return cls(sessions, [o.name for o in sessions[-1].get_outputs()])

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in `output_names` order."""
        values: dict[str, np.ndarray] = dict(feeds)
        for session, names, outs in zip(self.sessions, self._inputs, self._outputs, strict=True):
            results = session.run(outs, {n: values[n] for n in names})
            values = dict(zip(outs, results, strict=True))
        return [values[n] for n in self.output_names]
