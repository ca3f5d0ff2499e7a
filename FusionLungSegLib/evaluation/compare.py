"""The network alone in every engine side by side (``bench --compare-backends``): torch, ONNX Runtime
fp32 and int8, OpenVINO fp32, bf16 and int8, on the same batch of real chest CT."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["compare_backends"]

Clock = Callable[[], float]


def compare_backends(seg, repeats: int = 3, clock: Clock = time.perf_counter) -> dict:
    """The network alone in torch (fp32), ONNX Runtime fp32 and its int8 graph, and, where openvino is
    installed, OpenVINO in fp32, bf16 (CPUs with bf16 units) and int8, side by side: ``repeats`` rounds,
    each timing the same batch in each engine (after one warm-up each).

    The batch is real chest CT: the bundled sample's slices as the segmenter prepares them, repeated to
    ``seg``'s batch size.  ``seg`` must have the ONNX Runtime fp32 engine (backend auto or onnxruntime:
    CPU, precision fp32, onnxruntime installed).  Reports the median seconds per slice of each engine,
    their speed-ups over torch, the largest difference from torch's probabilities and, for int8, the
    fraction of pixels whose lung decision (p > 0.5) differs from torch's (OpenVINO: ``openvino[_P]_*`` keys).
    """
    from ..engines.hardware import cpu_info
    from ..engines.onnx import OnnxRuntimeEngine
    from ..engines.openvino import OpenVinoEngine
    from ..engines.selection import openvino_available
    from ..engines.torch_engine import TorchEngine

    candidates = getattr(seg.engine, "candidates", [seg.engine])
    engine = next((e for e in candidates if e.runtime == "onnxruntime"), None)
    if engine is None or engine.precision != "fp32":
        raise RuntimeError(
            "comparing backends needs ONNX Runtime on the CPU in fp32: --device cpu --precision fp32 and "
            "pip install 'fusionlungseg[onnx]'"
        )
    sample = seg.calibration_inputs()  # read once: the batch below and, if not cached yet, the int8 ranges
    int8 = OnnxRuntimeEngine(
        seg.model, engine._sha_source, seg.input_size, precision="int8", calibration=lambda: sample
    )
    x = sample.repeat(-(-seg.batch_size // len(sample)), 1, 1, 1)[: seg.batch_size].contiguous()
    torch_fp32 = TorchEngine(seg.model, seg.device, "fp32")
    engines = {"torch": torch_fp32.logits, "onnxruntime": engine.logits, "onnxruntime_int8": int8.logits}
    if openvino_available():
        precisions = ["fp32"] + (["bf16"] if cpu_info().get("bf16_matrix_units") else []) + ["int8"]
        for p in precisions:
            ov = OpenVinoEngine(seg.model, engine._sha_source, seg.input_size, precision=p, calibration=lambda: sample)
            engines["openvino" if p == "fp32" else f"openvino_{p}"] = ov.logits
    with torch.inference_mode():
        probs = {name: torch.sigmoid(run(x).float()) for name, run in engines.items()}  # also the warm-up
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, run in engines.items():
                t0 = clock()
                run(x)
                times[name].append(clock() - t0)
    per_slice = {name: float(np.median(t)) / seg.batch_size for name, t in times.items()}
    ref = probs["torch"]

    def against_torch(name: str) -> dict:
        return {
            "seconds_per_slice": round(per_slice[name], 4),
            "speedup": round(per_slice["torch"] / per_slice[name], 2),
            "max_probability_difference": round(float((ref - probs[name]).abs().max()), 4),
            "decisions_differing": round(float(((ref > 0.5) != (probs[name] > 0.5)).float().mean()), 5),
        }

    ort_int8 = against_torch("onnxruntime_int8")
    openvino = {f"{n}_{k}": v for n in engines if n.startswith("openvino") for k, v in against_torch(n).items()}
    return {
        "input_size": seg.input_size,
        "batch_size": seg.batch_size,
        "repeats": repeats,
        "torch_seconds_per_slice": round(per_slice["torch"], 4),
        "onnxruntime_seconds_per_slice": round(per_slice["onnxruntime"], 4),
        "onnxruntime_speedup": round(per_slice["torch"] / per_slice["onnxruntime"], 2),
        "max_probability_difference": float((ref - probs["onnxruntime"]).abs().max()),
        "onnxruntime_int8_seconds_per_slice": ort_int8["seconds_per_slice"],
        "onnxruntime_int8_speedup": ort_int8["speedup"],
        "int8_max_probability_difference": ort_int8["max_probability_difference"],
        "int8_decisions_differing": ort_int8["decisions_differing"],
        **openvino,
    }
