"""One place that turns a request (weights, device, precision, engine, input size) into a
:class:`~.network.NetworkPredictor`: it loads and checks the weights, resolves the device and precision,
and picks the engine, or the candidates ``auto`` times on the first batch."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.body import BODY_CROP
from ..nets.preprocess import HU_WINDOW
from ..nets.registry import build_model
from ..nets.weights import WeightsError, load_weights
from . import selection
from .auto import AutoEngine
from .hardware import resolve_device, resolve_precision
from .network import NetworkPredictor, sample_calibration_inputs
from .onnx import OnnxRuntimeEngine, weights_key
from .openvino import OpenVinoEngine
from .selection import ENGINE_PRECISIONS, engines_for, requested_backend, resolve_backend
from .torch_engine import TorchEngine

__all__ = ["ENGINES", "load_network", "make_predictor", "default_batch_size", "int8_may_pay"]

#: The engines besides torch, by ``backend`` name (with what each runs in ``selection.ENGINE_PRECISIONS``)
ENGINES = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}


def default_batch_size(device: torch.device, input_size: int) -> int:
    """Slices per forward pass: 32 on CUDA; on the CPU 4 at 160 px, fewer for larger input
    (the same speed per slice, and at 320 px batch 1 keeps about 640 MB of activations less than batch 4)."""
    if device.type == "cuda":
        return 32
    return min(8, max(1, int(4 * (160 / input_size) ** 2)))


def load_network(weights: str | Path | None, sha256: str | None = None) -> tuple[nn.Module, dict]:
    """The network of a weights file (None: the bundled one, checked by sha256) and its metadata."""
    state, meta = load_weights(weights, sha256)
    architecture = meta.get("architecture") or "FusionLungNet"  # stored by `train`, so never named twice
    try:
        model = build_model(architecture, **(meta.get("arch_options") or {}))
    except ValueError as exc:
        raise WeightsError(f"{weights or 'bundled weights'}: {exc}") from None
    try:
        model.load_state_dict(state)  # copies (and casts fp16 -> fp32) into the parameters
    except RuntimeError as exc:
        raise WeightsError(
            f"{weights or 'bundled weights'}: state dict does not fit {architecture} ({str(exc).splitlines()[0]})"
        ) from None
    return model, meta


def trained_sizes(meta: dict) -> tuple[int, int] | None:
    """(smallest, largest) input size the weights were trained at, from their metadata (None: unknown)."""
    trained = meta.get("input_size")
    if not trained:
        return None
    return int(meta.get("min_input_size") or trained), int(trained)


def int8_may_pay(meta: dict, device: torch.device, input_size: int, backend: str | None) -> bool:
    """Whether ``auto`` should time int8 against torch: on the CPU, with onnxruntime, the engine not
    pinned to torch, and weights from a file run at a size they were trained at (int8 masks are checked
    against fp32 there; outside that range the network is less sure and int8 moves more voxels)."""
    sizes = trained_sizes(meta)
    if device.type != "cpu" or not sizes or not selection.available():
        return False
    if requested_backend(backend) == "torch":  # pinned (argument or FUSIONLUNGSEG_BACKEND)
        return False
    return sizes[0] <= input_size <= sizes[1]


def make_predictor(
    weights: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    input_size: int | None = None,
    progress: bool = True,
    *,
    model: nn.Module | None = None,
    sha256: str | None = None,
    hu_window: tuple[float, float] | None = None,
    threshold: float = 0.5,
    body_crop: bool | None = None,
    precision: str = "auto",
    backend: str = "auto",
) -> NetworkPredictor:
    """A :class:`NetworkPredictor` for the request; arguments as :class:`~FusionLungSegLib.segmenter.LungSegmenter`.

    The predictor's ``meta`` is the weights' metadata (empty for a ``model`` given in memory).
    """
    dev = resolve_device(device)
    requested = (precision or "auto").lower()
    resolved = "int8" if requested == "int8" else resolve_precision(precision, dev)
    meta: dict = {}
    from_file = model is None
    if model is None:
        model, meta = load_network(weights, sha256)
    default = int(meta.get("default_input_size") or meta.get("input_size") or 320)  # chosen at export, else the largest
    size = int(input_size or default)
    if size < 32 or size % 32:
        raise ValueError(f"input_size must be a multiple of 32 (e.g. 160 or 320), got {size}")
    sizes = trained_sizes(meta)
    if sizes and not sizes[0] <= size <= sizes[1]:
        trained = f"{sizes[0]}-{sizes[1]}" if sizes[0] != sizes[1] else f"{sizes[1]}"
        warnings.warn(
            f"these weights were trained at {trained} px input, not {size} px: expect worse results "
            f"(leave input_size unset to use {default})",
            stacklevel=3,
        )
    window = tuple(hu_window or meta.get("hu_window") or HU_WINDOW)
    crop = meta.get("body_crop") if body_crop is None else (BODY_CROP if body_crop else None)
    enhance = bool(meta.get("enhancement"))
    batch = int(batch_size or default_batch_size(dev, size))
    if batch < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")

    key = weights_key(weights, sha256, None if from_file else model)

    def calibration() -> torch.Tensor:
        return sample_calibration_inputs(size, window, crop, enhance)

    may_int8 = requested == "auto" and int8_may_pay(meta, dev, size, backend)
    engine = _engine(model, dev, requested, resolved, backend, may_int8, key, size, calibration)
    return NetworkPredictor(
        engine,
        input_size=size,
        hu_window=window,
        body_crop=crop,
        batch_size=batch,
        threshold=threshold,
        enhance=enhance,
        progress=progress,
        meta=meta,
        model=model,
        precision_requested=requested,
    )


def _engine(model, dev, requested: str, resolved: str, backend: str, may_int8: bool, key, size: int, calibration):
    """The engine for the request: one by name, or the candidates ``auto`` times on the first batch.

    ``requested``: the precision as asked; ``resolved``: as resolved for torch on ``dev`` ("int8" when asked
    for by name); ``may_int8``: precision ``auto`` and int8 worth timing against torch (:func:`int8_may_pay`).
    """
    pinned = requested_backend(backend)
    if requested == "auto" and pinned in ENGINE_PRECISIONS:
        if may_int8:
            resolved = "int8"
        elif resolved not in ENGINE_PRECISIONS[pinned]:
            resolved = "fp32"  # ONNX Runtime has no bf16
    chosen = resolve_backend(backend, dev, resolved)
    engine_precision = resolved
    if may_int8 and chosen not in ENGINE_PRECISIONS:
        chosen, engine_precision = "auto", "int8"  # torch (bf16 or fp32) against int8, timed
    names = [chosen] if chosen in ENGINE_PRECISIONS else engines_for(dev, engine_precision) if chosen == "auto" else []
    torch_precision = resolved if resolved != "int8" else resolve_precision("auto", dev)
    torch_engine = TorchEngine(model, dev, torch_precision, requested if requested != "int8" else "auto")
    others = [
        ENGINES[name](torch_engine.model, key, size, precision=engine_precision, calibration=calibration)
        for name in names
    ]
    if chosen == "auto" and others:
        torch_runs = resolved != "int8"  # int8 asked for by name: torch is no candidate
        return AutoEngine(([torch_engine] if torch_runs else []) + others)
    return others[0] if others else torch_engine
