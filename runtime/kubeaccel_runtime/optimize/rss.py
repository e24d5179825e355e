"""Child process for bench.peak_rss: load models, run one batch, print memory from /proc."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main(argv: list[str]) -> None:
    """argv: threads, providers (comma-separated), feeds.npz, model paths...; prints bytes."""
    import numpy as np
    import onnxruntime as ort

    threads, providers, feeds_path, *paths = argv
    with np.load(feeds_path, allow_pickle=False) as data:
        values = {k: data[k] for k in data.files}
    before = _status_kib("VmRSS")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = [
        ort.InferenceSession(p, sess_options=opts, providers=providers.split(",")) for p in paths
    ]
    for session in sessions:
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, {i.name: values[i.name] for i in session.get_inputs()})
        values = dict(zip(names, results, strict=True))
    peak = _status_kib("VmHWM")
    print(
        json.dumps({"peakRssBytes": peak * 1024, "sessionRssBytes": max(0, peak - before) * 1024})
    )


if __name__ == "__main__":
    main(sys.argv[1:])
