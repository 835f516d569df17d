"""The host CPU as the benchmarks report it, and its native bf16 support."""

from __future__ import annotations

import os
import platform


def cpu_info() -> dict:
    """CPU model and the instruction-set flags that decide bf16 speed."""
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags_set = set(line.split(":", 1)[1].split())
            info["isa"] = sorted(
                f
                for f in flags_set
                if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")
            )
            break
    return info


def bf16_support(isa) -> str:
    """The CPU's native bf16 matmuls from cpu_info's `isa` list.

    Returns:
      "amx" (AMX-BF16 tiles, bf16 matmul peak about 4x fp32),
      "avx512_bf16" (about 2x on AMD EPYC, but 0.63x on Intel cores with
      AMX off: the flag alone does not tell, the measured peaks do), or
      "none": bf16 is emulated, slower than fp32, and bf16 speed cannot
      be judged on this CPU.
    """
    isa = set(isa or ())
    if "amx_bf16" in isa:
        return "amx"
    if "avx512_bf16" in isa:
        return "avx512_bf16"
    return "none"
