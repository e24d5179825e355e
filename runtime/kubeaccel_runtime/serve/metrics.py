"""Prometheus metrics of one server, in a registry of its own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServeMetrics:
    """Counters and histograms the server updates; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kubeaccel_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "kubeaccel_request_duration_seconds",
            "Infer request latency (receive to response).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "kubeaccel_inference_duration_seconds",
            "Time inside onnxruntime per session call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "kubeaccel_queue_duration_seconds",
            "Time a request waited before its session call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kubeaccel_batch_size",
            "Items (batch rows) per session call.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.validation_failures = Counter(
            "kubeaccel_validation_failures",
            "Rejected requests by reason.",
            ["reason"],
            registry=r,
        )
        self.nonfinite_outputs = Counter(
            "kubeaccel_nonfinite_outputs",
            "Output tensors that contained NaN or Inf.",
            ["output"],
            registry=r,
        )
        self.downstream_errors = Counter(
            "kubeaccel_downstream_errors",
            "Failed forwards to the next shard.",
            ["kind"],
            registry=r,
        )
        self.downstream_retries = Counter(
            "kubeaccel_downstream_retries",
            "Forwards to the next shard sent again (transport failure or 503).",
            ["cause"],
            registry=r,
        )
        self.inflight = Gauge(
            "kubeaccel_inflight_requests",
            "Infer requests being processed.",
            registry=r,
        )
        self.provider = Gauge(
            "kubeaccel_execution_provider",
            "1 for the onnxruntime provider in use.",
            ["provider"],
            registry=r,
        )
        self.ready = Gauge("kubeaccel_ready", "1 when the server reports ready.", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
