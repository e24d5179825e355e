"""CPU features that change how INT8 is quantized (read once, at the edge)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
_X86 = ("x86_64", "amd64", "i386", "i686")


@dataclass(frozen=True)
class CpuFeatures:
    """The machine's architecture and whether it has 8-bit dot-product (VNNI) instructions."""

    arch: str
    vnni: bool
    flags_known: bool


@dataclass(frozen=True)
class SaturationDecision:
    """Whether INT8 weights use 7 bits (reduce_range), and why."""

    reduce_range: bool
    reason: str

    def to_notes(self) -> dict[str, object]:
        """The decision as report fields."""
        return {"reduceRange": self.reduce_range, "reason": self.reason}


def parse_flags(cpuinfo: str) -> set[str]:
    """CPU flags from /proc/cpuinfo text (x86 `flags`, ARM `Features`)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def detect(cpuinfo_path: Path = CPUINFO) -> CpuFeatures:
    """Read the architecture and VNNI flags of this machine."""
    arch = platform.machine().lower()
    try:
        flags = parse_flags(cpuinfo_path.read_text())
    except OSError:
        return CpuFeatures(arch=arch, vnni=False, flags_known=False)
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"})
    return CpuFeatures(arch=arch, vnni=vnni, flags_known=bool(flags))


def saturation_guard(cpu: CpuFeatures) -> SaturationDecision:
    """The U8S8 guard: x86 without VNNI multiplies u8 x s8 with pmaddubsw, whose 16-bit
    intermediate sums can saturate; 7-bit weights (reduce_range) avoid it."""
    if cpu.arch not in _X86:
        return SaturationDecision(False, f"{cpu.arch}: no u8s8 saturation issue")
    if not cpu.flags_known:
        return SaturationDecision(True, "x86 with unknown CPU flags: 7-bit weights to be safe")
    if cpu.vnni:
        return SaturationDecision(False, "x86 with VNNI: 8-bit weights do not saturate")
    return SaturationDecision(True, "x86 without VNNI: 7-bit weights avoid u8s8 saturation")
