"""Which engine runs the network: torch, ONNX Runtime or OpenVINO, at which precision, and what is installed.

ONNX Runtime runs here on the CPU in fp32 or int8, OpenVINO in fp32, bf16 (CPUs with bf16 units) or int8;
int8 does not run in torch.  ``FUSIONLUNGSEG_BACKEND`` (auto, torch, onnxruntime or openvino) pins the
engine ``auto`` takes.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "BACKENDS",
    "ENGINE_NAMES",
    "ENGINE_PRECISIONS",
    "available",
    "engines_for",
    "openvino_available",
    "requested_backend",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: what each engine computes in; torch's fp32 and bf16 are decided in FusionLungSegLib.hardware
ENGINE_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
ENGINE_NAMES = {"torch": "torch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
#: Bumped when the exported graph changes for the same weights (wrapper, opset, exporter).


def available() -> bool:
    """True when onnxruntime (to run the graph) and onnx (torch needs it to export) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def openvino_available() -> bool:
    """True when openvino can run the graph: openvino, onnx (export) and onnxruntime (its quantizer builds
    the int8 graph) can all be imported."""
    return available() and importlib.util.find_spec("openvino") is not None


def _installed(engine: str) -> bool:
    return openvino_available() if engine == "openvino" else available()


_INSTALL = {
    "onnxruntime": "pip install 'fusionlungseg[onnx]'; in 3D Slicer's Python console: "
    "slicer.util.pip_install('onnx onnxruntime')",
    "openvino": "pip install 'fusionlungseg[openvino]'; in 3D Slicer's Python console: "
    "slicer.util.pip_install('onnx onnxruntime openvino')",
}


def requested_backend(backend: str | None) -> str:
    """The engine asked for: ``backend``, or for ``auto`` ``FUSIONLUNGSEG_BACKEND`` when it is set."""
    b = (backend or "auto").lower()
    if b == "auto":  # a deployment (or a test suite) may pin the engine: FUSIONLUNGSEG_BACKEND=torch
        b = os.environ.get("FUSIONLUNGSEG_BACKEND", "auto").strip().lower() or "auto"
    if b not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return b


def _why_not(engine: str, device: torch.device, precision: str) -> str | None:
    """Why ``engine`` cannot run ``precision`` on ``device`` here, or None."""
    if device.type != "cpu":
        return f"it runs on the CPU only here, not on {device}"
    runs = ENGINE_PRECISIONS[engine]
    if precision not in runs:
        listed = ", ".join(runs[:-1]) + " and " + runs[-1]
        return f"it runs {listed} only, not {precision} (use precision {' or '.join(runs)})"
    if engine == "openvino" and precision == "bf16":
        from . import hardware

        if not hardware.cpu_info().get("bf16_matrix_units"):
            return "it runs bf16 only on CPUs with bf16 units (amx_bf16, avx512_bf16) (use precision fp32 or int8)"
    if not _installed(engine):
        what = (
            "onnxruntime and onnx are not both"
            if engine == "onnxruntime"
            else "openvino, onnx and onnxruntime are not all"
        )
        return f"{what} installed ({_INSTALL[engine]})"
    return None


def engines_for(device: torch.device, precision: str) -> list[str]:
    """The installed engines besides torch that can run ``precision`` on ``device``."""
    return [e for e in ENGINE_PRECISIONS if _why_not(e, device, precision) is None]


def resolve_backend(backend: str | None, device: torch.device, precision: str) -> str:
    """``torch``, ``onnxruntime``, ``openvino`` or (still to be measured) ``auto`` for this device and precision.

    ONNX Runtime runs here on the CPU in fp32 or int8, OpenVINO in fp32, bf16 or int8; int8 does not run
    in torch.  ``auto`` falls back to torch where no other engine can run (another device, a precision
    they lack, not installed); an explicit engine that cannot run there is an error that says why.
    ``auto`` takes the environment variable ``FUSIONLUNGSEG_BACKEND`` (auto, torch, onnxruntime or
    openvino) when it is set.
    """
    b = requested_backend(backend)
    if precision == "int8":  # asked for by name: a torch pin in FUSIONLUNGSEG_BACKEND does not apply
        if (backend or "auto").lower() == "torch":
            raise ValueError(
                "precision int8 runs in ONNX Runtime or OpenVINO only: use backend onnxruntime, openvino or auto"
            )
        if device.type != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only, not on {device} (use precision auto or bf16 there)")
        if not available():
            raise ValueError(
                f"precision int8 needs onnxruntime and onnx ({_INSTALL['onnxruntime']}); or use precision auto"
            )
        if b == "torch":
            b = "auto"
    if b == "torch":
        return b
    if b in ENGINE_PRECISIONS:
        why = _why_not(b, device, precision)
        if why:
            raise ValueError(f"backend {b}: {why}")
        return b
    candidates = engines_for(device, precision)
    if precision == "int8" and len(candidates) == 1:  # torch cannot run int8: nothing to compare
        return candidates[0]
    return "auto" if candidates else "torch"
