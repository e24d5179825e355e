"""The Open Inference Protocol v2 server as a plain ASGI application.

A raw ASGI app instead of a framework: the hot path is one dict lookup per request, the
body is read with a hard size cap while it streams in, and nothing parses what the
handler does not need (see docs/benchmarks.md for the measured difference).
`create_app(model, settings)` takes the loaded model (or a slot it will arrive in), so
tests inject one and the CLI can answer liveness while the model still loads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson
from kubeaccel_api import __version__
from kubeaccel_api.routing import REPORT_PATH

from kubeaccel_runtime.serve.batching import Batcher, BatchStats
from kubeaccel_runtime.serve.chain import ChainConfig, NextShard
from kubeaccel_runtime.serve.codec import encode_response
from kubeaccel_runtime.serve.errors import (
    DownstreamFailed,
    DownstreamUnavailable,
    InferenceFailed,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServeError,
    UnsupportedMediaType,
    status_of,
)
from kubeaccel_runtime.serve.guard import guard_outputs
from kubeaccel_runtime.serve.metrics import CONTENT_TYPE as METRICS_TYPE
from kubeaccel_runtime.serve.metrics import ServeMetrics
from kubeaccel_runtime.serve.openapi import build_openapi
from kubeaccel_runtime.serve.routing import Router, RoutingSource
from kubeaccel_runtime.serve.session import LoadedModel
from kubeaccel_runtime.serve.validation import DecodedRequest, decode_request, parse_header_length

log = logging.getLogger("kubeaccel.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Array = np.ndarray[Any, Any]

JSON: Final = b"application/json"
EXTENSIONS: Final = ["binary_tensor_data"]
MODELS_PREFIX: Final = "/v2/models/"
# Share of inline_run_ms under which a call still runs inline while others are in flight.
_BUSY_INLINE_FRACTION: Final = 0.25


@dataclass(frozen=True)
class ServeSettings:
    """Operational settings of one server (the contract itself comes with the model)."""

    batching: bool = False
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    chain: ChainConfig | None = None
    run_workers: int = 1
    max_inflight: int = 1024
    # Request bytes buffered at once (declared Content-Length, else the size cap).
    max_inflight_bytes: int = 256 * 1024 * 1024
    # Session calls expected to take less than this run on the event loop itself: a
    # thread hand-off costs more than a tiny model (docs/benchmarks.md). 0 disables.
    inline_run_ms: float = 0.3
    # Used only while no model is loaded (the model's limits apply afterwards).
    max_request_bytes: int = 16 * 1024 * 1024
    # Shadow/canary routing to a candidate chain (shard 0 only); None: never routes.
    routing: RoutingSource | None = None


class ModelSlot:
    """Where the model arrives: empty while loading, then loaded, or failed with a reason."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model: LoadedModel | None = None
        self.problem = "model is loading"
        self.failed = False

    def set(self, model: LoadedModel) -> None:
        """The model is loaded and can serve."""
        self.model = model
        self.problem = ""

    def fail(self, reason: str) -> None:
        """The model failed to load; `reason` is reported on readiness."""
        self.failed = True
        self.problem = f"model failed to load: {reason}"

    def withdraw(self, reason: str) -> None:
        """A loaded model must not serve any more (its artifact no longer verifies).

        Requests already running finish on the session they hold; new ones get 503.
        """
        self.model = None
        self.failed = True
        self.problem = f"model withdrawn: {reason}"


class _ClientGone(Exception):
    """The client disconnected before the request body was read."""


class ServeApp:
    """ASGI callable: routes OIP v2 endpoints, /metrics and /openapi.json."""

    def __init__(self, slot: ModelSlot, settings: ServeSettings) -> None:
        self.slot = slot
        self.settings = settings
        self.metrics = ServeMetrics()
        self.draining = False
        self.inflight = 0
        self.inflight_bytes = 0
        self._executor = ThreadPoolExecutor(settings.run_workers, thread_name_prefix="onnxruntime")
        self._batcher: Batcher | None = None
        self._next = (
            NextShard(settings.chain, slot.name, self._count_retry) if settings.chain else None
        )
        self.router = Router(settings.routing, slot.name, None) if settings.routing else None
        self._counters: dict[tuple[str, int], Any] = {}
        # The document of the model it was built for (None: the generic one).
        self._openapi: tuple[LoadedModel | None, bytes] = (
            None,
            orjson.dumps(build_openapi(routes=self.router is not None)),
        )
        self._provider_reported = ""
        self._inline_s = settings.inline_run_ms / 1000.0
        self._row_cost_s: float | None = None  # unknown until measured: start in the thread
        self._simple: dict[str, Callable[[], Awaitable[tuple[int, bytes, bytes]]]] = {
            "/v2": self._server_metadata,
            "/v2/health/live": self._live,
            "/v2/health/ready": self._ready,
            "/metrics": self._metrics,
            "/openapi.json": self._openapi_doc,
            REPORT_PATH: self._rollout_report,
        }

    # ------------------------------------------------------------------ lifecycle

    def begin_drain(self) -> None:
        """Report not-ready from now on; in-flight and new requests are still served."""
        if not self.draining:
            log.info("draining: readiness is now false", extra={"inflight": self.inflight})
        self.draining = True
        self.metrics.ready.set(0)

    async def aclose(self) -> None:
        """Finish queued batches and close the next-shard connection pool."""
        if self._batcher is not None:
            await self._batcher.stop()
            self._batcher = None
        if self.router is not None:
            await self.router.aclose()
        if self._next is not None:
            await self._next.aclose()
        self._executor.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ HTTP plumbing

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        endpoint = _endpoint_label(path)
        extra_headers: list[tuple[bytes, bytes]] = []
        try:
            status, body, content_type, extra_headers = await self._dispatch(
                scope["method"], path, scope, receive
            )
        except ServeError as exc:
            status, content_type = status_of(exc), JSON
            body = orjson.dumps({"error": exc.message})
            if isinstance(exc, InvalidRequest | PayloadTooLarge | UnsupportedMediaType):
                self.metrics.validation_failures.labels(exc.reason).inc()
            elif isinstance(exc, DownstreamFailed | DownstreamUnavailable):
                self.metrics.downstream_errors.labels(exc.reason).inc()
            if isinstance(exc, MethodNotAllowed):
                extra_headers = [(b"allow", exc.allow.encode())]
            if isinstance(exc, PayloadTooLarge | UnsupportedMediaType):
                # The unread rest of the body would otherwise still be received and discarded.
                extra_headers = [(b"connection", b"close")]
            if status >= 500:
                log.warning("request failed", extra={"status": status, "error": exc.message})
        except _ClientGone:
            return
        except Exception:
            log.exception("unexpected error", extra={"path": path[:200]})
            status, content_type = 500, JSON
            body = orjson.dumps({"error": "internal server error (logged)"})
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *extra_headers,
        ]
        if self.draining:
            # Keep-alive clients reconnect (through the Service, to a pod still in it)
            # instead of sending their next request to a pod about to stop.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._count(endpoint, status)
        if endpoint == "infer":
            self.metrics.latency.observe(time.perf_counter() - started)

    def _count(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.requests.labels(endpoint, str(status))
        child.inc()

    async def _dispatch(
        self, method: str, path: str, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        if path.startswith(MODELS_PREFIX):
            return await self._model_route(method, path, scope, receive)
        handler = self._simple.get(path.rstrip("/") or path)
        if handler is None:
            raise NotFound(f"no such endpoint: {method} {path[:200]}", reason="path")
        _require(method, "GET")
        status, body, ctype = await handler()
        return status, body, ctype, []

    async def _model_route(
        self, method: str, path: str, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        parts = path[len(MODELS_PREFIX) :].split("/")
        name, rest = parts[0], parts[1:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if rest in ([], [""]):
            _require(method, "GET")
            self._model_or_404(name, version)
            status, body = await self._model_metadata()
            return status, body, JSON, []
        if rest == ["ready"]:
            _require(method, "GET")
            self._model_or_404(name, version)
            ok, why = await self.readiness()
            return *_health("ready", ok, why), JSON, []
        if rest == ["infer"]:
            _require(method, "POST")
            self._model_or_404(name, version)
            body, headers = await self._infer(scope, receive)
            ctype = headers.pop("content-type").encode()
            return 200, body, ctype, [(k.encode(), v.encode()) for k, v in headers.items()]
        raise NotFound(f"no such endpoint: {method} {path[:200]}", reason="path")

    def _model_or_404(self, name: str, version: str | None) -> None:
        if name != self.slot.name:
            raise NotFound(
                f"unknown model {name[:100]!r}; this server serves {self.slot.name!r}",
                reason="model",
            )
        model = self.slot.model
        if version is not None and model is not None and version != model.version:
            raise NotFound(
                f"model {name!r} has no version {version[:100]!r} (available: {model.version})",
                reason="model",
            )

    # ------------------------------------------------------------------ endpoints

    async def readiness(self) -> tuple[bool, str]:
        """(ready, why not): loaded, not draining, and the next shard ready."""
        if self.draining:
            return False, "server is shutting down"
        model = self.slot.model
        if model is None:
            self.metrics.ready.set(0)
            return False, self.slot.problem
        if self._provider_reported != model.provider:
            self.metrics.provider.labels(model.provider).set(1)
            self._provider_reported = model.provider
        if self._next is not None:
            ok, why = await self._next.ready()
            if not ok:
                self.metrics.ready.set(0)
                return False, why
        self.metrics.ready.set(1)
        return True, ""

    async def _server_metadata(self) -> tuple[int, bytes, bytes]:
        doc = {"name": "kubeaccel", "version": __version__, "extensions": EXTENSIONS}
        return 200, orjson.dumps(doc), JSON

    async def _live(self) -> tuple[int, bytes, bytes]:
        return 200, orjson.dumps({"live": True}), JSON

    async def _ready(self) -> tuple[int, bytes, bytes]:
        ok, why = await self.readiness()
        status, body = _health("ready", ok, why)
        return status, body, JSON

    async def _metrics(self) -> tuple[int, bytes, bytes]:
        await self.readiness()  # refresh the ready/provider gauges
        self.metrics.inflight.set(self.inflight)
        return 200, self.metrics.render(), METRICS_TYPE.encode()

    async def _openapi_doc(self) -> tuple[int, bytes, bytes]:
        model = self.slot.model
        if self._openapi[0] is not model:
            self._openapi = (
                model,
                orjson.dumps(build_openapi(model, routes=self.router is not None)),
            )
        return 200, self._openapi[1], JSON

    async def _rollout_report(self) -> tuple[int, bytes, bytes]:
        if self.router is None:
            return 404, orjson.dumps({"error": "this server does not route (not shard 0)"}), JSON
        return 200, orjson.dumps(self.router.report().to_wire()), JSON

    async def _model_metadata(self) -> tuple[int, bytes]:
        model = self._require_model()
        doc = {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor_meta(r) for r in model.contract.inputs],
            "outputs": [_tensor_meta(r) for r in model.final_outputs],
        }
        return 200, orjson.dumps(doc)

    def _require_model(self) -> LoadedModel:
        model = self.slot.model
        if model is None:
            raise NotReady(self.slot.problem, reason="not_ready")
        return model

    async def _serve(self, model: LoadedModel, request: DecodedRequest) -> dict[str, Array]:
        """The model outputs the client asked for, from this shard and the ones after it."""
        outputs = await self._run(model, request)
        guard_outputs(outputs, model.contract.outputs, request.batch, self._count_non_finite)
        if self._next is not None:
            names = [o.name for o in request.outputs]
            outputs = await self._next.infer(outputs, names, request.id)
            missing = [n for n in names if n not in outputs]
            if missing:
                raise InferenceFailed(f"next shard returned no {missing}", reason="downstream")
        return outputs

    async def _infer(self, scope: Scope, receive: Receive) -> tuple[bytes, dict[str, str]]:
        started = time.perf_counter()
        model = self._require_model()
        headers = _headers(scope)
        cap = model.contract.max_request_bytes
        # Bodies are buffered: reserve the declared size (or the cap) against a budget so
        # that many concurrent uploads cannot exhaust the pod's memory.
        reserve = min(_declared_length(headers, cap), cap)
        if self.inflight >= self.settings.max_inflight or (
            self.inflight and self.inflight_bytes + reserve > self.settings.max_inflight_bytes
        ):
            raise Overloaded(
                f"{self.inflight} requests ({self.inflight_bytes} bytes) in flight; limits "
                f"{self.settings.max_inflight} requests, {self.settings.max_inflight_bytes} "
                "bytes; retry later",
                reason="overloaded",
            )
        self.inflight += 1
        self.inflight_bytes += reserve
        try:
            body = await _read_body(receive, headers, cap)
            header_len = parse_header_length(
                headers.get(b"inference-header-content-length", b"").decode("latin-1") or None,
                len(body),
            )
            request = decode_request(body, header_len, model.contract, model.final_outputs)
            router = self.router
            if router is not None:
                router.refresh()
                if router.take_canary():
                    answer = await router.forward(body, headers, started)
                    if answer is not None:
                        return answer
            try:
                outputs = await self._serve(model, request)
            except ServeError as exc:
                if router is not None:
                    router.record_serving(status_of(exc) < 500, started)
                raise
            if router is not None:
                router.record_serving(True, started)
                if router.take_mirror():
                    names = [o.name for o in request.outputs]
                    router.top1_output = model.final_outputs[0].name
                    router.mirror(request.inputs, names, outputs, request.id)
            return encode_response(model.name, model.version, request.id, outputs, request.outputs)
        finally:
            self.inflight -= 1
            self.inflight_bytes -= reserve

    def _count_retry(self, cause: str) -> None:
        self.metrics.downstream_retries.labels(cause).inc()

    def _count_non_finite(self, output: str) -> None:
        self.metrics.nonfinite_outputs.labels(output).inc()

    async def _run(self, model: LoadedModel, request: DecodedRequest) -> dict[str, Array]:
        batcher = self._batcher_for(model)
        try:
            if batcher is not None:
                return await batcher.submit(request.inputs, request.batch, request.signature)
            if self._run_inline(request.batch):
                outputs, took = _timed_run(model, request.inputs)
                self.metrics.queue.observe(0.0)
            else:
                loop = asyncio.get_running_loop()
                submitted = time.perf_counter()
                outputs, took = await loop.run_in_executor(
                    self._executor, _timed_run, model, request.inputs
                )
                # Waiting for the worker thread (and the hand-off back) is queue time.
                self.metrics.queue.observe(max(0.0, time.perf_counter() - submitted - took))
            self._learn_cost(took / request.batch)
            self.metrics.inference.observe(took)
            self.metrics.batch_size.observe(request.batch)
            return outputs
        except ServeError:
            raise
        except Exception as exc:  # onnxruntime's exceptions are untyped pybind classes
            raise _run_error(exc) from None

    def _run_inline(self, rows: int) -> bool:
        """Whether this session call runs on the event loop instead of the worker thread.

        A thread hand-off costs ~0.1 ms, so a short call alone in the server runs inline.
        With other requests in flight the thread lets HTTP work overlap the computation
        (measured faster for the example CNN), so only very short calls stay inline.
        """
        cost = self._row_cost_s
        if cost is None:
            return False
        limit = self._inline_s if self.inflight <= 1 else self._inline_s * _BUSY_INLINE_FRACTION
        return cost * rows < limit

    def _learn_cost(self, per_row: float) -> None:
        """Track the compute time per batch row: down at once, up slowly.

        Measurements in the worker thread include waiting for the GIL after the call;
        following them up quickly would lock a cheap model out of the inline path.
        """
        cost = self._row_cost_s
        if cost is None or per_row < cost:
            self._row_cost_s = per_row
        else:
            self._row_cost_s = cost + 0.05 * (per_row - cost)

    def _batcher_for(self, model: LoadedModel) -> Batcher | None:
        if not self.settings.batching or not model.batching_capable:
            return None
        if self._batcher is None:
            self._batcher = Batcher(
                model.run,
                self._executor,
                max_batch_size=self.settings.max_batch_size,
                max_delay_s=self.settings.max_delay_ms / 1000.0,
                concurrency=self.settings.run_workers,
                on_batch=self._observe_batch,
            )
            self._batcher.start()
        return self._batcher

    def _observe_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_size.observe(stats.rows)
        self.metrics.inference.observe(stats.run_seconds)
        for waited in stats.queue_seconds:
            self.metrics.queue.observe(waited)


# ---------------------------------------------------------------------- helpers


def create_app(model: LoadedModel | ModelSlot, settings: ServeSettings | None = None) -> ServeApp:
    """The ASGI app serving `model` (or the slot it will be loaded into)."""
    if isinstance(model, LoadedModel):
        slot = ModelSlot(model.name)
        slot.set(model)
    else:
        slot = model
    settings = settings or ServeSettings()
    if settings.batching and slot.model is not None and not slot.model.batching_capable:
        log.warning("batching disabled: not every input and output has a dynamic dimension 0")
    return ServeApp(slot, settings)


_LABELS: Final = {
    "/v2": "server",
    "/v2/health/live": "live",
    "/v2/health/ready": "ready",
    "/metrics": "metrics",
    "/openapi.json": "openapi",
}


def _endpoint_label(path: str) -> str:
    """A bounded metric label for a request path."""
    if path.startswith(MODELS_PREFIX):
        tail = path.rstrip("/").rsplit("/", 1)[-1]
        return {"infer": "infer", "ready": "model_ready"}.get(tail, "metadata")
    return _LABELS.get(path.rstrip("/") or path, "other")


def _require(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method} not allowed here; use {allowed}", allowed)


def _health(key: str, ok: bool, why: str) -> tuple[int, bytes]:
    if ok:
        return 200, orjson.dumps({key: True})
    return 503, orjson.dumps({key: False, "error": why})


def _tensor_meta(rule: Any) -> dict[str, Any]:
    return {"name": rule.name, "datatype": rule.datatype, "shape": list(rule.shape)}


def _headers(scope: Scope) -> dict[bytes, bytes]:
    wanted = (
        b"content-length",
        b"content-type",
        b"inference-header-content-length",
        b"content-encoding",
    )
    return {k: v for k, v in scope["headers"] if k in wanted}


def _declared_length(headers: dict[bytes, bytes], default: int) -> int:
    """Content-Length as an int, or `default` when absent or malformed."""
    try:
        return int(headers[b"content-length"])
    except (KeyError, ValueError):
        return default


async def _read_body(receive: Receive, headers: dict[bytes, bytes], cap: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed `cap` bytes."""
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in (b"identity", b""):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not supported; "
            "send the body uncompressed",
            reason="encoding",
        )
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidRequest("Content-Length is not an integer", reason="header") from None
        if length > cap:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds limits.maxRequestBytes {cap}",
                reason="too_large",
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(
                f"request body exceeds limits.maxRequestBytes {cap}", reason="too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _timed_run(model: LoadedModel, inputs: dict[str, Array]) -> tuple[dict[str, Array], float]:
    """One session call and its duration, measured where it runs."""
    started = time.perf_counter()
    outputs = model.run(inputs)
    return outputs, time.perf_counter() - started


def _run_error(exc: Exception) -> ServeError:
    """Map an onnxruntime exception: invalid argument -> 400, anything else -> 500."""
    kind = type(exc).__name__
    text = str(exc).splitlines()[0][:300] if str(exc) else kind
    if kind in ("InvalidArgument", "InvalidGraph") or "INVALID_ARGUMENT" in str(exc)[:200]:
        return InvalidRequest(f"the model rejected the input: {text}", reason="model")
    log.error("inference failed", extra={"error": text, "kind": kind})
    return InferenceFailed(f"inference failed: {text}", reason="inference")
