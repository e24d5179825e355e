"""The GPU check: what kubeaccel's CUDA and TensorRT paths do on this machine's GPU.

`python -m kubeaccel_runtime.gpucheck --out DIR` (or `scripts/gpu-check --out DIR`, which
installs the `gpu` extra first) records the providers onnxruntime offers and the server
uses, optimizes the example models for a GPU target, measures FP32 CPU / FP32 CUDA / FP16
CUDA / TensorRT FP16 and INT8 in one interleaved run, serves an optimized artifact under
load, and writes report.json and report.md into DIR. Without a usable GPU the GPU columns
are skipped with the reason, so the same command runs (and is tested) on any machine.

Modules: targets (the spec the check optimizes for), variants (the measured columns),
environment, providers, optimize_step, serve_step, report, cli.
"""
