"""What the CPU can do, and the numeric precision that pays on it.

:func:`cpu_info` reads the CPU's model name and flags (``/proc/cpuinfo``, else
``lscpu``, else :mod:`platform`); :func:`resolve_precision` turns ``auto`` into
``bf16`` or ``fp32`` for a device.  bf16 pays on CPUs with bf16 matrix units
(Intel AMX, AVX-512 BF16) and on CUDA; elsewhere PyTorch emulates it and it is
several times slower than fp32.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "BF16_MATRIX_FLAGS",
    "PRECISIONS",
    "ALL_PRECISIONS",
    "cpu_info",
    "parse_cpuinfo",
    "parse_lscpu",
    "resolve_precision",
    "describe_cpu",
    "cpu_slug",
    "resolve_device",
]

#: CPU flags (Linux names) of units that multiply bf16 matrices in hardware.
BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")
#: Vector instruction sets, best first, as reported in ``isa``.
_ISAS = ("avx512f", "avx2", "avx", "sse4_2", "neon", "asimd")
#: torch's precisions (``resolve_precision``)
PRECISIONS = ("auto", "fp32", "bf16")
#: what every front door offers: torch's, and int8 (ONNX Runtime or OpenVINO on the CPU)
ALL_PRECISIONS = (*PRECISIONS, "int8")


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """Model name and flags of the first processor in ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    name, flags = None, set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if name or flags:  # blank line after the first processor's block
                break
            continue
        key = key.strip().lower()
        if key == "model name" and name is None:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name, flags


def parse_lscpu(text: str) -> tuple[str | None, set[str]]:
    """Model name and flags from ``lscpu`` output."""
    name, flags = None, set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and name is None:
            name = value.strip()
        elif key == "flags":
            flags = set(value.split())
    return name, flags


def _read_cpu() -> tuple[str | None, set[str], str]:
    try:
        name, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        if name or flags:
            return name, flags, "/proc/cpuinfo"
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, env={**os.environ, "LC_ALL": "C"})
        name, flags = parse_lscpu(out.stdout)
        if name or flags:
            return name, flags, "lscpu"
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or None, set(), "platform"


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """The CPU: ``name``, ``cores`` (logical CPUs), ``isa`` (best vector set),
    ``bf16_flags`` (those of :data:`BF16_MATRIX_FLAGS` it has), ``bf16_matrix_units``
    and ``source`` (where the flags were read; "platform" means flags are unknown)."""
    name, flags, source = _read_cpu()
    bf16 = [f for f in BF16_MATRIX_FLAGS if f in flags]
    return {
        "name": name or platform.machine() or "unknown",
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "isa": next((isa for isa in _ISAS if isa in flags), None),
        "bf16_flags": bf16,
        "bf16_matrix_units": bool(bf16),
        "source": source,
    }


def cpu_slug(info: dict | None = None) -> str:
    """A folder name for benchmark results of this CPU: model name and its best matrix or vector units,
    e.g. ``amd-epyc-avx512bf16``, ``intel-xeon-processor-amx``, ``amd-epyc-avx2``."""
    import re

    info = info or cpu_info()
    flags = info.get("bf16_flags") or []
    units = "amx" if "amx_bf16" in flags else "avx512bf16" if "avx512_bf16" in flags else info.get("isa") or "cpu"
    name = re.sub(r"\(r\)|\(tm\)", "", str(info.get("name") or "unknown").lower())
    return re.sub(r"[^a-z0-9]+", "-", f"{name} {units}").strip("-")


def describe_cpu(info: dict | None = None) -> str:
    """One line, e.g. "AMD EPYC, 2 CPUs, avx2, no bf16 matrix units"."""
    info = info or cpu_info()
    units = "bf16 matrix units (" + ", ".join(info["bf16_flags"]) + ")" if info["bf16_matrix_units"] else None
    parts = [info["name"], f"{info['cores']} CPUs", info["isa"], units or "no bf16 matrix units"]
    return ", ".join(str(p) for p in parts if p)


def resolve_precision(precision: str | None, device, *, warn: bool = True) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` in :data:`PRECISIONS` on ``device`` (a torch device or string).

    ``auto``: bf16 on CUDA devices that support it and on CPUs with bf16 matrix
    units, fp32 elsewhere.  An explicit ``bf16`` on a CPU without those units is
    kept (it works, emulated) with a warning that it is slow.
    """
    import torch

    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    if dev.type == "cuda":
        if p == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return p
    units = dev.type == "cpu" and cpu_info()["bf16_matrix_units"]
    if p == "auto":
        return "bf16" if units else "fp32"
    if p == "bf16" and dev.type == "cpu" and not units and warn:
        warnings.warn(
            f"bf16 on this CPU ({describe_cpu()}) is emulated and several times slower than fp32 "
            "(bf16 pays only with amx_bf16 or avx512_bf16); use precision 'auto' or 'fp32'",
            stacklevel=3,
        )
    return p


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU.  Raises for an unavailable CUDA request."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available (use --device cpu)")
    return dev
