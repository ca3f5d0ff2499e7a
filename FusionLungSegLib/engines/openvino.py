"""OpenVINO as an optional engine on the CPU (``pip install fusionlungseg[openvino]``).

It runs the graphs :class:`~.onnx.OnnxRuntimeEngine` exports and quantizes (fp32, int8), and also bf16 (its
CPU plugin converts the fp32 graph where the CPU has bf16 units); on an AVX-512 CPU with bf16 and VNNI units
it ran the network 1.25-1.3x faster than ONNX Runtime in int8 and 1.4x faster than torch in bf16.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..resources import cache_dir
from .onnx import OnnxRuntimeEngine

__all__ = ["OpenVinoEngine"]


class OpenVinoEngine(OnnxRuntimeEngine):
    """FusionLungNet in OpenVINO on the CPU: the same cached graphs as :class:`OnnxRuntimeEngine`
    (fp32, and the int8 copy built by ONNX Runtime's quantizer), compiled by OpenVINO's CPU plugin.
    ``precision="bf16"`` runs the fp32 graph with bf16 inference precision (CPUs with bf16 units)."""

    runtime = "openvino"

    def version(self) -> str:
        import openvino

        return openvino.__version__

    def _load(self, path: Path, threads: int):
        import openvino as ov

        core = ov.Core()
        if (
            self.precision != "fp32"
        ):  # OpenVINO's cache of compiled int8/bf16 graphs: 0.2 s instead of 0.5-0.7 s to load
            blobs = cache_dir() / "openvino"  # (fp32 compiles in 0.2 s anyway; its blob would take 180 MB)
            try:
                blobs.mkdir(parents=True, exist_ok=True)
                if os.access(blobs, os.W_OK):
                    core.set_property({"CACHE_DIR": str(blobs)})
            except OSError:  # a read-only cache only costs compiling again
                pass
        compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                # explicit: on CPUs with bf16 units the plugin would otherwise pick bf16 for the fp32 graph
                "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        return compiled, compiled.create_infer_request()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) fp32 input -> (N, 1, S, S) refined logits (a CPU tensor)."""
        x = x.detach().to("cpu", torch.float32).contiguous()
        compiled, request = self.session()
        out = request.infer({0: x.numpy()})[compiled.output(0)]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))  # the request reuses its buffer
