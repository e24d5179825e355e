"""The optimization Job: spec -> plan -> stages -> accuracy gate -> partition -> bench -> artifact.

IO happens at the ends only (fetching the source and data, writing the artifact); the middle
works on in-memory models. A model outside the budget raises BudgetExceeded before anything
is written.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.constants import REPORT_FILE
from kubeaccel_api.contract import Tensor, contract_problems
from kubeaccel_api.target import serving_target
from kubeaccel_api.v1alpha1 import (
    GENERATED_SAMPLES,
    AcceleratedModel,
    AcceleratedModelSpec,
    AccuracyGateStatus,
    CandidateReport,
    DataSource,
    ExecutionProvider,
    ModelContract,
    OptimizationStatus,
    PartitionBalance,
    SourceFormat,
)
from kubeaccel_api.version import __version__
from onnx import ModelProto

from kubeaccel_runtime import gpu_info, model_format, onnx_io
from kubeaccel_runtime.artifact_manifest import EngineCache, Manifest, TensorInfo
from kubeaccel_runtime.model_contract import ContractUnreadable, read_contract
from kubeaccel_runtime.optimize import accuracy, artifact, cpu, mixed, select, stages
from kubeaccel_runtime.optimize import data as sample_data
from kubeaccel_runtime.optimize import source as sources
from kubeaccel_runtime.optimize.bench import (
    BenchSettings,
    Latency,
    measure,
    node_times,
    peak_rss,
    top_ops,
)
from kubeaccel_runtime.optimize.config import Candidate, GraphOptConfig, Precision
from kubeaccel_runtime.optimize.engine_cache import BuiltEngines, build_engines, shard_options
from kubeaccel_runtime.optimize.errors import (
    BudgetExceeded,
    ContractMismatch,
    OptimizeError,
    ProviderUnavailable,
    UnsupportedModel,
)
from kubeaccel_runtime.optimize.graph import ensure_node_names
from kubeaccel_runtime.optimize.partition import Shard, partition
from kubeaccel_runtime.optimize.plan import BASELINE, Plan, build_plan, needs_calibration
from kubeaccel_runtime.optimize.session import Chain, SessionSettings, create, effective_provider
from kubeaccel_runtime.optimize.weights import weight_facts
from kubeaccel_runtime.serve.session import LoadError, choose_providers
from kubeaccel_runtime.trt import CPU, ENGINE_CACHE_DIR, TENSORRT, serving_batches, trt_options

# Batch sizes above this are not benchmarked (time and memory of the Job).
BENCH_BATCH_CAP = 32
CALIBRATION_SEED_OFFSET = 1
# Validation samples the mixed-precision search ranks nodes on (the gate always uses all).
SENSITIVITY_SAMPLES = 256
# Profiled runs behind the measured node times that balance compute shards.
PROFILE_RUNS = 8
ORIGINAL = f"{BASELINE} (original)"


class Progress(Protocol):
    """Receives stage start/finish events (the CLI draws them with Rich)."""

    def start(self, stage: str, detail: str = "") -> None:
        """A stage begins."""

    def done(self, stage: str, detail: str = "") -> None:
        """A stage finished."""


class _Silent:
    def start(self, stage: str, detail: str = "") -> None:
        pass

    def done(self, stage: str, detail: str = "") -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """Knobs of one optimization run (the spec says what, these say how hard to measure)."""

    threads: int = 1
    bench: BenchSettings = field(default_factory=BenchSettings)
    bench_batch_cap: int = BENCH_BATCH_CAP
    cwd: Path | None = None
    pvc_root: Path | None = None
    limits: sources.FetchLimits = field(default_factory=sources.FetchLimits)
    cpu: cpu.CpuFeatures | None = None
    measure_rss: bool = True
    profile: bool = True
    # Build the shards' TensorRT engines into the artifact when TensorRT serves them.
    engine_cache: bool = True


@dataclass(frozen=True)
class OptimizeResult:
    """Where the artifact is, its report, and whether an existing one was reused."""

    path: Path
    report: dict[str, Any]
    reused: bool

    @property
    def summary(self) -> dict[str, Any]:
        """The compact OptimizationStatus wire dict."""
        return dict(self.report.get("summary", {}))


@dataclass
class _Measured:
    candidate: Candidate
    model: ModelProto | None
    records: list[dict[str, Any]]
    figures: accuracy.AccuracyFigures | None
    violations: list[str]
    error: str | None = None
    latency: dict[int, Latency] = field(default_factory=dict)
    # Batch-1 p50 latency relative to the original model's, in the same interleaved run.
    score: float | None = None
    pareto: bool = False
    kept_fp32: tuple[str, ...] = ()
    search: dict[str, Any] | None = None


def _quality(figures: accuracy.AccuracyFigures) -> float:
    """Higher is better: labelled accuracy, else top-1 agreement, else minus the error."""
    if figures.accuracy_after is not None:
        return figures.accuracy_after
    if figures.top1_agreement is not None:
        return figures.top1_agreement
    return -figures.mean_rel_error


def _scored(m: _Measured, b1: int, bmax: int) -> select.Scored:
    assert m.model is not None and m.figures is not None
    return select.Scored(
        name=m.candidate.name,
        bytes=onnx_io.model_bytes(m.model),
        latency_ms=m.latency[b1].p50_ms,
        throughput=m.latency[bmax].throughput,
        quality=_quality(m.figures),
    )


def optimize_spec(
    resource: AcceleratedModel,
    out_dir: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    options: RunOptions | None = None,
) -> Path:
    """Optimize `resource` into `<out_dir>/<artifact-id>/` and return that directory."""
    return run_optimization(resource, out_dir, force=force, progress=progress, options=options).path


def run_optimization(
    resource: AcceleratedModel,
    out_dir: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    options: RunOptions | None = None,
) -> OptimizeResult:
    """The whole Job; raises an OptimizeError subclass on any expected failure."""
    opts = options or RunOptions()
    events: Progress = progress or _Silent()
    spec = resource.spec
    aid = artifact_id(spec)
    manifest = None if force else artifact.existing(out_dir, aid)
    if manifest is not None:
        # The contract is not part of the artifact id: a changed one is checked here.
        check_reused_contract(spec, manifest)
        events.done("reuse", f"artifact {aid} already exists")
        report = json.loads((out_dir / aid / REPORT_FILE).read_text())
        return OptimizeResult(out_dir / aid, report, reused=True)
    with tempfile.TemporaryDirectory(prefix="kubeaccel-opt-") as tmp:
        job = _Job(resource, opts, events, Path(tmp))
        shards, report, provider = job.run(aid)
        events.start("write", str(out_dir / aid))
        path = artifact.write_artifact(
            out_dir,
            artifact_id=aid,
            model_name=resource.metadata.name,
            source_sha256=job.source_sha256,
            execution_provider=provider,
            shards=shards,
            spec_wire=spec.to_wire(),
            report=report,
            contract=job.contract,
            force=True,
            engines=job.engines,
        )
        events.done("write", str(path))
    return OptimizeResult(path, report, reused=False)


def check_contract(
    spec: AcceleratedModelSpec, inputs: Sequence[Tensor], outputs: Sequence[Tensor]
) -> None:
    """A written spec.inputs/outputs must name the model's tensors with the same dtype and rank.

    Raises:
        ContractMismatch: every disagreement, one per line.
    """
    if spec.inputs is None:
        return
    problems = contract_problems(spec.inputs, spec.outputs, inputs, outputs)
    if problems:
        raise ContractMismatch("the spec does not match the model:\n  " + "\n  ".join(problems))


def check_reused_contract(spec: AcceleratedModelSpec, manifest: Manifest) -> None:
    """A written contract must fit the model an existing artifact was built from.

    Raises:
        ContractMismatch: as check_contract (artifacts written before contracts were recorded
            are not checked here; the server still checks them when it loads).
    """
    if manifest.contract is not None:
        check_contract(spec, manifest.contract.inputs, manifest.contract.outputs)


def _basename(uri: str, default: str) -> str:
    # file://name has the name in the "host" part for urlparse: split by hand.
    rest = uri.partition("://")[2].split("?", 1)[0]
    name = rest.rstrip("/").rsplit("/", 1)[-1]
    return name if name and onnx_io.is_safe_relative(name) else default


class _Job:
    """One run's state; methods are the stages, in order."""

    def __init__(
        self, resource: AcceleratedModel, opts: RunOptions, events: Progress, work: Path
    ) -> None:
        self.resource = resource
        self.spec = resource.spec
        self.opts = opts
        self.events = events
        self.work = work
        self.cwd = opts.cwd or Path.cwd()
        self.pvc = opts.pvc_root or sources.pvc_root()
        self.source_sha256 = ""
        self.companions: dict[str, str] = {}
        self.contract: ModelContract | None = None
        self.session_settings = SessionSettings(threads=opts.threads)
        self.target = serving_target(resource.spec)
        self.provider_notes: list[str] = []
        self.providers_requested: list[str] = []
        self.engines: tuple[Path, EngineCache] | None = None

    # ------------------------------------------------------------------ ends: IO

    def fetch_source(self) -> sources.Fetched:
        src = self.spec.source
        self.events.start("fetch", src.uri)
        dest = self.work / "source" / _basename(src.uri, "model.onnx")
        fetched = sources.fetch(
            src.uri,
            dest,
            expected_sha256=src.sha256,
            cwd=self.cwd,
            pvc=self.pvc,
            limits=self.opts.limits,
        )
        try:
            # Before any parser sees the bytes: a pickle is refused, not parsed.
            model_format.check_declared(fetched.path, src.format)
        except model_format.NotAModel as exc:
            raise UnsupportedModel(f"{src.uri}: {exc}") from None
        if src.format is SourceFormat.ONNX:
            try:
                names = onnx_io.peek_external_data(fetched.path)
            except onnx_io.NotOnnx as exc:
                raise UnsupportedModel(f"{src.uri}: {exc}; {model_format.FORMATS_HINT}") from None
            except onnx_io.ModelLoadError as exc:
                raise UnsupportedModel(f"{src.uri}: {exc}") from None
            fetched = sources.copy_companions(fetched, names, cwd=self.cwd, pvc=self.pvc)
        self.source_sha256 = fetched.sha256
        self.companions = fetched.companions
        verified = "sha256 verified" if fetched.verified else "UNVERIFIED (allowUnverified)"
        self.events.done("fetch", f"{fetched.bytes} bytes, {verified}")
        return fetched

    def load_model(self, fetched: sources.Fetched) -> ModelProto:
        src = self.spec.source
        self.events.start("load", src.format.value)
        if src.format is SourceFormat.ONNX:
            try:
                model = onnx_io.load(fetched.path)
            except onnx_io.ModelLoadError as exc:  # not ONNX at all was refused when fetched
                raise UnsupportedModel(f"{src.uri}: {exc}") from None
        else:
            if src.format is SourceFormat.TORCHSCRIPT and self.spec.inputs is None:
                # The API refuses this too; a spec handed over by other means is checked here.
                raise UnsupportedModel(
                    "spec.inputs is required for torchscript sources (TorchScript files do "
                    "not record input dtypes and shapes)"
                )
            from kubeaccel_runtime.optimize.torch_export import export_to_onnx

            model = export_to_onnx(
                fetched.path, src.format, self.spec.inputs or [], self.spec.outputs, self.work
            )
        try:
            inputs, outputs = onnx_io.model_inputs(model), onnx_io.model_outputs(model)
        except onnx_io.ModelLoadError as exc:
            raise UnsupportedModel(str(exc)) from None
        try:
            self.contract = read_contract(model)
        except ContractUnreadable as exc:
            if self.spec.inputs is None:
                raise UnsupportedModel(
                    f"{src.uri}: cannot read the request contract from the model: {exc}"
                ) from None
            self.contract = None  # the written contract stands alone, as before
        check_contract(self.spec, inputs, outputs)
        origin = "written in the spec" if self.spec.inputs is not None else "read from the model"
        # Mixed precision leaves nodes in FP32 by name: every node gets one.
        model = ensure_node_names(model)
        self.events.done(
            "load",
            f"{len(model.graph.node)} nodes, {onnx_io.model_bytes(model)} bytes, contract {origin}",
        )
        return model

    def samples(
        self, source: DataSource, inputs: list[TensorInfo], *, seed_offset: int, what: str
    ) -> sample_data.Samples:
        if source.uri is None:
            return sample_data.generate(
                inputs,
                self.spec.inputs or [],
                count=source.samples or GENERATED_SAMPLES,
                seed=source.seed + seed_offset,
            )
        dest = self.work / what / _basename(source.uri, "samples.npz")
        fetched = sources.fetch(
            source.uri,
            dest,
            expected_sha256=None,
            cwd=self.cwd,
            pvc=self.pvc,
            limits=self.opts.limits,
        )
        return sample_data.read_file(fetched.path, inputs, count=source.samples)

    # ------------------------------------------------------------------ middle: in memory

    def settings(self, providers: tuple[str, ...]) -> SessionSettings:
        return SessionSettings(
            providers=providers,
            threads=self.opts.threads,
            level=self.spec.optimization.graph_optimization_level,
        )

    def wanted_providers(self) -> list[str]:
        """The providers the shards will ask for on the target, as the server chooses them."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        try:
            return choose_providers(self.target.provider, available)
        except LoadError as exc:
            raise ProviderUnavailable(f"{exc}; {self._where()}") from None

    def _where(self) -> str:
        return (
            f"the spec targets {self.target.describe()}, and a GPU target is optimized where "
            "it will serve: on the GPU image, with a GPU"
        )

    def check_provider(self, used: str, wanted: list[str]) -> None:
        """A GPU target's figures must come from its GPU: refuse or flag a fallback.

        An explicit cuda/tensorrt target fails the Job; `auto` carries on (as the shards
        would) and the report says which provider the figures describe.
        """
        explicit = self.target.provider is not ExecutionProvider.AUTO
        if self.target.is_gpu and used == CPU:
            message = (
                f"onnxruntime runs the model on {used} (no usable GPU, or missing CUDA/TensorRT "
                f"libraries; providers asked for: {', '.join(wanted)})"
            )
        elif used != wanted[0]:
            message = f"onnxruntime runs the model on {used}, not {wanted[0]}"
        else:
            return
        if explicit:
            raise ProviderUnavailable(
                f"executionProvider {self.target.provider.value}: {message}; {self._where()}"
            )
        self.provider_notes.append(f"{message}; the figures describe {used}")

    def trt_settings(self, precision: Precision) -> SessionSettings:
        """Session settings for a candidate of `precision` (TensorRT needs its flags)."""
        if TENSORRT not in self.session_settings.providers:
            return self.session_settings
        return self.session_settings.with_trt(
            trt_options(fp16=precision is Precision.FP16, int8=precision is Precision.INT8)
        )

    def baseline(self, model: ModelProto) -> tuple[Chain, str]:
        wanted = self.wanted_providers()
        self.providers_requested = wanted
        settings = self.settings(tuple(wanted))
        try:
            session = create(model, settings)
        except Exception as exc:  # onnxruntime raises Fail/InvalidGraph/NotImplemented
            raise UnsupportedModel(
                f"onnxruntime cannot run the model: {onnx_io.first_line(exc)}"
            ) from None
        provider = effective_provider(session)
        self.check_provider(provider, wanted)
        # Later sessions ask for what the baseline got, then what comes after it.
        rest = wanted[wanted.index(provider) :] if provider in wanted else [provider, CPU]
        self.session_settings = SessionSettings(
            providers=tuple(rest), threads=settings.threads, level=settings.level
        )
        return Chain([session], [o.name for o in session.get_outputs()]), provider

    def eval_batch(self, model: ModelProto) -> int:
        fixed = onnx_io.fixed_batch(model)
        return fixed if fixed is not None else accuracy.EVAL_BATCH

    def bench_batches(
        self, model: ModelProto, samples: sample_data.Samples
    ) -> dict[int, sample_data.Feeds]:
        fixed = onnx_io.fixed_batch(model)
        if fixed is not None:
            sizes = [fixed]
        else:
            batching = self.spec.runtime.batching
            limit = batching.max_batch_size if batching.enabled else self.spec.limits.max_batch
            sizes = sorted({1, max(1, min(limit, self.opts.bench_batch_cap))})
        return {b: samples.first_batch(b) for b in sizes}

    def build(
        self,
        plan: Plan,
        model: ModelProto,
        reference: list[np.ndarray],
        validation: sample_data.Samples,
    ) -> list[_Measured]:
        """Build and gate every candidate; a quantized one over budget also gets a mixed try."""
        measured: list[_Measured] = []
        for candidate in plan.candidates:
            self.events.start("candidate", candidate.name)
            m = self._build_one(candidate, model, reference, validation, plan.auto)
            measured.append(m)
            verdict = m.error or ("in budget" if not m.violations else "OVER budget")
            self.events.done("candidate", f"{candidate.name}: {verdict}")
            quantized = candidate.precision in (Precision.INT8, Precision.INT4)
            if m.model is not None and m.violations and quantized:
                mixed = self._mixed(candidate, model, reference, validation)
                if mixed is not None:
                    measured.append(mixed)
        return measured

    def _build_one(
        self,
        candidate: Candidate,
        model: ModelProto,
        reference: list[np.ndarray],
        validation: sample_data.Samples,
        auto: bool,
    ) -> _Measured:
        budget = self.spec.optimization.accuracy_budget
        try:
            built, records = stages.run_steps(model, candidate.steps)
            outputs = accuracy.run_all(
                Chain.of([built], self.trt_settings(candidate.precision)),
                validation,
                self.eval_batch(model),
            )
        except OptimizeError as exc:
            if not auto:
                raise
            return _Measured(candidate, None, [], None, [], error=f"failed: {exc}")
        except Exception as exc:  # onnxruntime rejecting a built model: a failed candidate
            if not auto:
                raise UnsupportedModel(
                    f"{candidate.name}: the optimized model does not run: {exc}"
                ) from None
            return _Measured(candidate, None, [], None, [], error=f"does not run: {exc}")
        figures = accuracy.compare(reference, outputs, validation.labels)
        return _Measured(candidate, built, records, figures, accuracy.violations(figures, budget))

    def _mixed(
        self,
        candidate: Candidate,
        model: ModelProto,
        reference: list[np.ndarray],
        validation: sample_data.Samples,
    ) -> _Measured | None:
        """The candidate with its most sensitive nodes kept in FP32 (mixed.search)."""
        batch = self.eval_batch(model)
        quick = validation.take(min(validation.count, SENSITIVITY_SAMPLES))
        quick_reference = [r[: quick.count] for r in reference]

        settings = self.trt_settings(candidate.precision)

        def evaluate(built: ModelProto, fast: bool) -> accuracy.AccuracyFigures:
            data, ref = (quick, quick_reference) if fast else (validation, reference)
            outputs = accuracy.run_all(Chain.of([built], settings), data, batch)
            return accuracy.compare(ref, outputs, data.labels)

        name = candidate.name + mixed.SUFFIX
        self.events.start("mixed-precision", f"{candidate.name}: per-node sensitivity")
        try:
            outcome = mixed.search(
                model, candidate, evaluate, self.spec.optimization.accuracy_budget
            )
        except OptimizeError as exc:
            self.events.done("mixed-precision", f"{name}: failed ({exc})")
            return _Measured(candidate, None, [], None, [], error=f"failed: {exc}")
        except Exception as exc:  # onnxruntime rejecting a rebuilt model
            self.events.done("mixed-precision", f"{name}: does not run")
            return _Measured(candidate, None, [], None, [], error=f"does not run: {exc}")
        if outcome is None:
            self.events.done("mixed-precision", f"{candidate.name}: no node to keep in FP32")
            return None
        kept = ", ".join(outcome.kept_fp32) or "none"
        verdict = "in budget" if not outcome.violations else "still OVER budget"
        self.events.done("mixed-precision", f"{name}: {verdict}; FP32 nodes: {kept}")
        return _Measured(
            outcome.candidate,
            outcome.model,
            outcome.records,
            outcome.figures,
            outcome.violations,
            kept_fp32=outcome.kept_fp32,
            search=outcome.log,
        )

    def choose(
        self,
        plan: Plan,
        base: Chain,
        measured: list[_Measured],
        feeds: dict[int, sample_data.Feeds],
    ) -> _Measured:
        """Measure every candidate that runs, mark the Pareto front, pick for the objective."""
        built = [m for m in measured if m.model is not None]
        ok = [m for m in built if not m.violations]
        if not plan.auto and not ok:
            budget = self.spec.optimization.accuracy_budget
            first = measured[0]
            assert first.figures is not None
            tried = [m for m in measured[1:] if m.kept_fp32]
            extra = (
                f" (also with {len(tried[0].kept_fp32)} node(s) kept in FP32: "
                + "; ".join(tried[0].violations)
                + ")"
                if tried
                else ""
            )
            try:
                accuracy.check_budget(first.figures, budget, first.candidate.name)
            except BudgetExceeded as exc:
                raise BudgetExceeded(str(exc) + extra) from None
        self.events.start("measure", f"{len(built)} candidate(s) vs {BASELINE}, interleaved")
        variants: dict[str, Chain] = {ORIGINAL: base}
        for m in built:
            if not m.candidate.is_baseline and m.model is not None:
                variants[m.candidate.name] = Chain.of(
                    [m.model], self.trt_settings(m.candidate.precision)
                )
        timings = measure(variants, feeds, self.opts.bench)
        base_lat = timings[ORIGINAL]
        b1, bmax = min(feeds), max(feeds)
        for m in built:
            m.latency = base_lat if m.candidate.is_baseline else timings[m.candidate.name]
            m.score = m.latency[b1].p50_ms / base_lat[b1].p50_ms
        scored = {m.candidate.name: _scored(m, b1, bmax) for m in ok}
        front = select.pareto(list(scored.values()))
        for m in built:
            m.pareto = m.candidate.name in front
        self.events.done(
            "measure", ", ".join(f"{m.candidate.name} {m.score:.2f}x" for m in built if m.score)
        )
        if not plan.auto:
            return ok[0]
        name = select.best(self.spec.optimization.objective, list(scored.values()))
        return next(m for m in ok if m.candidate.name == name)

    def run(self, aid: str) -> tuple[list[Shard], dict[str, Any], str]:
        fetched = self.fetch_source()
        model = self.load_model(fetched)
        inputs = onnx_io.model_inputs(model)
        self.events.start("data", "validation samples")
        validation = self.samples(
            self.spec.optimization.validation, inputs, seed_offset=0, what="validation"
        )
        calibration = None
        quant = self.spec.optimization.quantization
        if needs_calibration(self.spec):
            source = quant.calibration or DataSource(seed=self.spec.optimization.validation.seed)
            calibration = self.samples(
                source,
                inputs,
                seed_offset=CALIBRATION_SEED_OFFSET if quant.calibration is None else 0,
                what="calibration",
            )
        self.events.done(
            "data",
            f"validation: {validation.origin}"
            + (f"; calibration: {calibration.origin}" if calibration else ""),
        )
        base, provider = self.baseline(model)
        batch = self.eval_batch(model)
        reference = accuracy.run_all(base, validation, batch)
        budget = self.spec.optimization.accuracy_budget
        accuracy.check_budget_applies(budget, reference, validation.labels is not None)
        features = self.opts.cpu or cpu.detect()
        saturation = cpu.saturation_guard(features)
        plan = build_plan(
            self.spec,
            provider=provider,
            saturation=saturation,
            calibration=calibration,
            facts=weight_facts(model),
        )
        measured = self.build(plan, model, reference, validation)
        feeds = self.bench_batches(model, validation)
        chosen = self.choose(plan, base, measured, feeds)
        chosen_model = chosen.model if chosen.model is not None else model

        part = self.spec.optimization.partition
        self.events.start("partition", f"{part.shards} shard(s), balance {part.balance.value}")
        measured_costs = None
        if part.shards > 1 and part.balance is PartitionBalance.COMPUTE and provider != TENSORRT:
            # Balance on what each node really costs here, at the largest benchmarked batch
            # (TensorRT fuses the graph into engines: no per-node times, FLOPs estimates stay).
            measured_costs = node_times(
                chosen_model, feeds[max(feeds)], self.session_settings, PROFILE_RUNS
            )
        shards = partition(chosen_model, part.shards, part.balance, measured_costs)
        self.events.done(
            "partition",
            ", ".join(f"shard {s.index}: {len(s.model.graph.node)} nodes" for s in shards),
        )

        self.events.start("graph-optimize", self.spec.optimization.graph_optimization_level.value)
        graph_notes: list[dict[str, Any]] = []
        final: list[Shard] = []
        for shard in shards:
            out = stages.run_stage(
                stages.GRAPH_OPTIMIZE,
                shard.model,
                GraphOptConfig(
                    level=self.spec.optimization.graph_optimization_level, provider=provider
                ),
            )
            graph_notes.append({"shard": shard.index, **out.notes})
            final.append(Shard(shard.index, out.model, shard.inputs, shard.outputs, shard.cost))
        self.events.done(
            "graph-optimize",
            ", ".join(f"shard {n['shard']}: offline={n['offline']}" for n in graph_notes),
        )

        self.events.start("verify", "final artifact vs original")
        final_settings = self.trt_settings(chosen.candidate.precision)
        final_chain = Chain.of([s.model for s in final], final_settings)
        final_outputs = accuracy.run_all(final_chain, validation, batch)
        figures = accuracy.compare(reference, final_outputs, validation.labels)
        accuracy.check_budget(figures, budget, f"the final artifact ({chosen.candidate.name})")
        unsplit = accuracy.run_all(Chain.of([chosen_model], final_settings), validation, batch)
        split_diff = accuracy.compare(unsplit, final_outputs, None).max_abs_diff
        gate = accuracy.gate(figures, budget)
        self.events.done("verify", f"max abs diff {figures.max_abs_diff:.3g}")

        self.events.start("bench", "before vs after, interleaved")
        timings = measure({"before": base, "after": final_chain}, feeds, self.opts.bench)
        small = feeds[min(feeds)]
        big = feeds[max(feeds)]
        # Profiling and the RSS subprocess would build every TensorRT engine again.
        host_figures = provider != TENSORRT
        profile = self.opts.profile and host_figures
        bottlenecks = (
            top_ops([s.model for s in final], small, final_settings, self.opts.bench.profile_runs)
            if profile
            else []
        )
        bottlenecks_before = (
            top_ops([model], small, self.session_settings, self.opts.bench.profile_runs)
            if profile
            else []
        )
        rss = self.opts.measure_rss and host_figures
        rss_before = peak_rss([model], big, self.opts.bench, self.session_settings) if rss else None
        rss_after = (
            peak_rss([s.model for s in final], big, self.opts.bench, final_settings)
            if rss
            else None
        )
        self.events.done("bench", "")
        engines = self.build_engines(final, chosen.candidate.precision, provider)

        report = _report(
            aid=aid,
            job=self,
            fetched_bytes=onnx_io.model_bytes(model),
            provider=provider,
            plan=plan,
            measured=measured,
            chosen=chosen,
            final=final,
            figures=figures,
            gate=gate,
            split_diff=split_diff,
            timings=timings,
            bottlenecks=bottlenecks,
            bottlenecks_before=bottlenecks_before,
            rss=(rss_before, rss_after),
            graph_notes=graph_notes,
            validation=validation,
            features=features,
            engines=engines,
            gpus=self.gpus(provider),
            cost_basis=_cost_basis(part.shards, part.balance, measured_costs is not None),
        )
        return final, report, provider

    def gpus(self, provider: str) -> dict[str, Any] | None:
        """nvidia-smi's view of the GPUs, for a report measured on a GPU provider."""
        if provider == CPU:
            return None
        found, why = gpu_info.query()
        return {"gpus": [g.to_report() for g in found], "problem": why}

    def build_engines(
        self, final: list[Shard], precision: Precision, provider: str
    ) -> BuiltEngines | None:
        """Build the shards' TensorRT engines for the artifact when TensorRT serves them."""
        if provider != TENSORRT or not self.opts.engine_cache:
            return None
        opt_batch, max_batch = serving_batches(self.spec)
        options = shard_options(final, precision, opt_batch=opt_batch, max_batch=max_batch)
        self.events.start("engines", f"TensorRT engines for {len(final)} shard(s)")
        built = build_engines(final, options, self.work, self.opts.threads, self.target.provider)
        self.engines = (
            built.folder,
            EngineCache(
                provider=TENSORRT,
                dir=ENGINE_CACHE_DIR,
                gpu=built.gpu,
                compute_capability=built.compute_capability,
                shard_options=built.shard_options,
                max_batch=max_batch
                if any("trt_profile_max_shapes" in o for o in built.shard_options)
                else None,
                files={},  # recorded by the artifact writer as it copies them
            ),
        )
        self.events.done(
            "engines",
            f"{len(built.files)} file(s) on {built.gpu}, "
            f"{built.notes['rebuiltOnReload']} rebuilt on reload",
        )
        return built


def _cost_basis(shards: int, balance: PartitionBalance, measured: bool) -> str:
    if shards == 1:
        return "none (one shard)"
    if balance is PartitionBalance.MEMORY:
        return "weight bytes per shard"
    return "measured node times" if measured else "estimated FLOPs"


def _lat(latency: dict[int, Latency]) -> dict[str, Any]:
    batches = sorted(latency)
    out = {"batch1": latency[batches[0]].to_report()}
    out["maxBatch"] = latency[batches[-1]].to_report()
    return out


def _report(
    *,
    aid: str,
    job: _Job,
    fetched_bytes: int,
    provider: str,
    plan: Plan,
    measured: list[_Measured],
    chosen: _Measured,
    final: list[Shard],
    figures: accuracy.AccuracyFigures,
    gate: accuracy.Gate,
    split_diff: float,
    timings: dict[str, dict[int, Latency]],
    bottlenecks: list[dict[str, Any]],
    bottlenecks_before: list[dict[str, Any]],
    rss: tuple[dict[str, int] | None, dict[str, int] | None],
    graph_notes: list[dict[str, Any]],
    validation: sample_data.Samples,
    features: cpu.CpuFeatures,
    engines: BuiltEngines | None,
    gpus: dict[str, Any] | None,
    cost_basis: str,
) -> dict[str, Any]:
    spec = job.spec
    bytes_after = sum(onnx_io.model_bytes(s.model) for s in final)
    before, after = timings["before"], timings["after"]
    b1 = min(before)
    speedup = before[b1].p50_ms / after[b1].p50_ms if after[b1].p50_ms > 0 else None
    bmax = max(before)
    candidates: list[dict[str, Any]] = []
    summary_candidates: list[CandidateReport] = []
    for m in measured:
        entry: dict[str, Any] = {
            "config": m.candidate.name,
            "precision": m.candidate.precision.value,
            "pruned": m.candidate.pruned,
            "withinBudget": m.model is not None and not m.violations,
            "chosen": m is chosen,
        }
        if m.error:
            entry["error"] = m.error
        if m.model is not None:
            entry["bytes"] = onnx_io.model_bytes(m.model)
            entry["stages"] = m.records
        if m.figures is not None:
            entry["accuracy"] = m.figures.to_report()
        if m.violations:
            entry["violations"] = m.violations
        if m.kept_fp32 or m.search is not None:
            entry["keptFp32"] = list(m.kept_fp32)
            entry["mixedPrecision"] = m.search
        throughput = None
        if m.latency:
            entry["latency"] = _lat(m.latency)
            entry["relativeLatency"] = round(m.score, 4) if m.score is not None else None
            throughput = round(m.latency[max(m.latency)].throughput, 2)
            entry["throughput"] = throughput
            entry["pareto"] = m.pareto
        candidates.append(entry)
        summary_candidates.append(
            CandidateReport(
                config=m.candidate.name,
                latency_ms=round(m.latency[min(m.latency)].p50_ms, 4) if m.latency else None,
                throughput=throughput,
                pareto=m.pareto if m.latency else None,
                bytes=entry.get("bytes"),
                max_abs_diff=m.figures.max_abs_diff if m.figures else None,
                top1_agreement=m.figures.top1_agreement if m.figures else None,
                accuracy=m.figures.accuracy_after if m.figures else None,
                within_budget=bool(entry["withinBudget"]),
                chosen=m is chosen,
            )
        )
    summary = OptimizationStatus(
        artifact_id=aid,
        bytes_before=fetched_bytes,
        bytes_after=bytes_after,
        size_ratio=round(bytes_after / fetched_bytes, 4) if fetched_bytes else None,
        latency_before_ms=round(before[b1].p50_ms, 4),
        latency_after_ms=round(after[b1].p50_ms, 4),
        speedup=round(speedup, 3) if speedup else None,
        accuracy_before=figures.accuracy_before,
        accuracy_after=figures.accuracy_after,
        max_abs_diff=figures.max_abs_diff,
        top1_agreement=figures.top1_agreement,
        chosen=chosen.candidate.name,
        objective=spec.optimization.objective if plan.auto else None,
        gate=AccuracyGateStatus.model_validate(gate.to_report()),
        execution_provider=provider,
        candidates=summary_candidates,
        contract=job.contract,
    )
    saturation = plan.saturation
    return {
        "kubeaccelVersion": __version__,
        "artifactId": aid,
        "modelName": job.resource.metadata.name,
        "source": {
            "uri": spec.source.uri,
            "format": spec.source.format.value,
            "sha256": job.source_sha256,
            "verified": spec.source.sha256 is not None,
            # The spec's digest covers the .onnx file; external weight files are recorded here.
            "externalData": job.companions,
        },
        "executionProvider": provider,
        "target": {
            **job.target.to_wire(),
            "providersRequested": job.providers_requested,
            "providerUsed": provider,
            "notes": job.provider_notes,
        },
        "engineCache": None
        if engines is None
        else {
            "gpu": engines.gpu,
            "computeCapability": engines.compute_capability,
            "files": sorted(engines.files),
            "shardOptions": engines.shard_options,
            **engines.notes,
        },
        "sizes": {
            "bytesBefore": fetched_bytes,
            "bytesAfter": bytes_after,
            "sizeRatio": summary.size_ratio,
        },
        "accuracy": {
            **figures.to_report(),
            "gate": gate.to_report(),
            "validation": validation.origin,
            "budget": spec.optimization.accuracy_budget.to_wire(),
            "partitionMaxAbsDiff": split_diff,
        },
        "latency": {"before": _lat(before), "after": _lat(after)},
        "speedup": summary.speedup,
        "speedupMaxBatch": round(before[bmax].p50_ms / after[bmax].p50_ms, 3)
        if after[bmax].p50_ms > 0
        else None,
        "chosen": {
            "config": chosen.candidate.name,
            "mode": "auto" if plan.auto else spec.optimization.quantization.mode.value,
            "objective": spec.optimization.objective.value if plan.auto else None,
            "keptFp32": list(chosen.kept_fp32),
            "stages": chosen.records,
        },
        "candidates": candidates,
        "bottlenecks": bottlenecks,
        "bottlenecksBefore": bottlenecks_before,
        "peakRss": {"before": rss[0], "after": rss[1]},
        "partition": {
            "shards": len(final),
            "balance": spec.optimization.partition.balance.value,
            "costBasis": cost_basis,
            "detail": [
                {
                    "index": s.index,
                    "nodes": len(s.model.graph.node),
                    "bytes": onnx_io.model_bytes(s.model),
                    "cost": s.cost,
                    "inputs": [t.model_dump(mode="json") for t in s.inputs],
                    "outputs": [t.model_dump(mode="json") for t in s.outputs],
                }
                for s in final
            ],
        },
        "graphOptimization": graph_notes,
        "hardware": {
            "arch": features.arch,
            "vnni": features.vnni,
            "int8ReduceRange": saturation.to_notes(),
            "gpu": gpus,
        },
        "bench": {
            "threads": job.opts.threads,
            "iterations": job.opts.bench.iterations,
            "warmup": job.opts.bench.warmup,
            "batches": sorted(before),
            "interleaved": True,
        },
        "summary": summary.to_wire(),
    }
