"""Open Inference Protocol v2 load generator (command line over kubeaccel_runtime.loadgen).

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8080 --model mlp \\
        --batch 1 --concurrency 8 --requests 2000 --duration 10 [--json-tensors] [--engine httpx]

Random inputs are made from the model's metadata; prints one JSON object with p50/p90/p99
(ms), req/s and items/s. The loop is bounded by --requests and --duration.
"""

from __future__ import annotations

import argparse
import json

import httpx
from kubeaccel_runtime.loadgen import LoadSpec, inputs_from_metadata, run


def main() -> int:
    """Parse arguments, run one load test, print its figures."""
    ap = argparse.ArgumentParser(description="OIP v2 load generator")
    ap.add_argument("--url", required=True, help="Base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=10.0, help="Upper bound in seconds.")
    ap.add_argument("--json-tensors", action="store_true", help="JSON tensors instead of binary.")
    ap.add_argument("--engine", choices=["raw", "httpx"], default="raw")
    args = ap.parse_args()
    meta = httpx.get(f"{args.url.rstrip('/')}/v2/models/{args.model}", timeout=10).json()
    spec = LoadSpec(
        url=args.url,
        model=args.model,
        inputs=inputs_from_metadata(meta, args.batch),
        binary=not args.json_tensors,
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=args.duration,
        engine=args.engine,
    )
    print(json.dumps(run(spec).as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
