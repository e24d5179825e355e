"""What `nvidia-smi` says about the GPUs of this machine (model, driver, memory, class).

Used by the optimization Job (which GPU class its TensorRT engines were built on) and by the
GPU check's report. Parsing is pure; only `query` runs the command, with a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

QUERY_FIELDS = ("name", "driver_version", "memory.total", "compute_cap")
TIMEOUT_S = 15.0


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi reports it."""

    name: str
    driver: str
    memory_mib: int | None
    compute_capability: str | None

    def to_report(self) -> dict[str, object]:
        """camelCase fields for JSON reports."""
        return {
            "name": self.name,
            "driver": self.driver,
            "memoryMiB": self.memory_mib,
            "computeCapability": self.compute_capability,
        }


def _number(text: str) -> int | None:
    head = text.strip().split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def _field(text: str) -> str | None:
    value = text.strip()
    return None if not value or value.startswith("[") or value == "N/A" else value


def parse_query(csv_text: str) -> list[GpuInfo]:
    """GPUs from `nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap
    --format=csv,noheader` output; lines that do not parse are skipped."""
    gpus: list[GpuInfo] = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            continue
        parts += [""] * (len(QUERY_FIELDS) - len(parts))
        gpus.append(
            GpuInfo(
                name=parts[0],
                driver=parts[1],
                memory_mib=_number(parts[2]),
                compute_capability=_field(parts[3]),
            )
        )
    return gpus


def query(binary: str = "nvidia-smi") -> tuple[list[GpuInfo], str | None]:
    """The GPUs nvidia-smi lists, or ([], why not) when it is missing or fails."""
    path = shutil.which(binary)
    if path is None:
        return [], f"{binary} not found on PATH"
    cmd = [path, f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"{binary} failed: {exc}"
    if done.returncode != 0:
        # Older drivers do not know compute_cap: ask again without it.
        retry = [path, f"--query-gpu={','.join(QUERY_FIELDS[:3])}", "--format=csv,noheader,nounits"]
        try:
            done = subprocess.run(
                retry, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return [], f"{binary} failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return [], f"{binary} exited {done.returncode}: {tail[0][:200]}"
    gpus = parse_query(done.stdout)
    return gpus, None if gpus else f"{binary} listed no GPU"
