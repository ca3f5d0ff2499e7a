"""A network as the pipeline's :class:`~FusionLungSegLib.core.pipeline.Predictor`: canonical HU slices are
cropped to the body, windowed and resized to the network input, run in batches by an engine, and the
probabilities put back on each slice's grid and thresholded."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..core.body import body_mask, crop_box
from ..core.pipeline import CancelFn, CanonicalSlices, ProgressFn, SegmentationCancelled
from ..nets.preprocess import enhance_slices, from_network, to_network

__all__ = ["Engine", "NetworkPredictor", "network_inputs", "sample_calibration_inputs"]

# numpy dtypes that torch.from_numpy takes and window_hu handles; anything else is cast to float32.
_TENSOR_DTYPES = tuple(np.dtype(t) for t in ("int8", "uint8", "int16", "int32", "int64", "float32", "float64"))


class Engine(Protocol):
    """What runs the network: torch, ONNX Runtime, OpenVINO, or ``auto`` choosing among them."""

    runtime: str  # "torch", "onnxruntime", "openvino" or "auto"
    precision: str  # "fp32", "bf16" or "int8"
    device: torch.device  # where inputs go and probabilities come back

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) network input in [0, 1] -> (N, 1, S, S) fp32 probabilities."""
        ...


def crop_boxes(body: np.ndarray, spacing_yx, body_crop: dict | None) -> list:
    """The network's box on each slice of a canonical body mask (None everywhere without cropping)."""
    if body_crop is None:
        return [None] * body.shape[0]
    return [crop_box(body[z], spacing_yx, **body_crop) for z in range(body.shape[0])]


def network_inputs(
    hu: np.ndarray,
    index: np.ndarray,
    spacing_yx,
    boxes: list,
    input_size: int,
    hu_window,
    *,
    enhance: bool = False,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, list]:
    """Canonical HU slices ``hu[index]`` -> network input (N, 1, S, S) on ``device``, and each slice's frame
    for :func:`~FusionLungSegLib.nets.preprocess.from_network`."""
    # One batch at a time, in its own dtype (int16 CT moves half the bytes of float32);
    # windowing, resizing and thresholding run on the model's device.
    batch = np.array(hu[index])
    if enhance:
        batch = enhance_slices(batch)
    if batch.dtype not in _TENSOR_DTYPES:
        batch = batch.astype(np.float32)
    batch = torch.from_numpy(batch)
    if device is not None and device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    # Each slice has its own crop box: prepare slice by slice, run the network on the batch.
    pairs = [to_network(batch[i : i + 1], input_size, spacing_yx, hu_window, boxes[k]) for i, k in enumerate(index)]
    return torch.cat([x for x, _ in pairs]), [frame for _, frame in pairs]


def sample_calibration_inputs(
    input_size: int, hu_window, body_crop: dict | None, enhance: bool = False
) -> torch.Tensor:
    """The bundled sample CT's slices as network inputs (N, 1, S, S), prepared as segmentation prepares
    slices: the real chest CT from which an int8 graph takes its activation ranges."""
    import SimpleITK as sitk

    from ..core.geometry import AxialReorientation
    from ..io import read_image
    from ..resources import sample_ct_path

    image = read_image(sample_ct_path())
    reo = AxialReorientation.from_image(image)
    hu = reo.to_canonical(sitk.GetArrayViewFromImage(image))
    spacing_yx = reo.spacing_zyx[1:]
    boxes = crop_boxes(body_mask(hu, reo.spacing_zyx), spacing_yx, body_crop)
    x, _ = network_inputs(hu, np.arange(hu.shape[0]), spacing_yx, boxes, input_size, hu_window, enhance=enhance)
    return x.cpu()


class NetworkPredictor:
    """Lung masks from a network run by ``engine``.

    Args:
        engine: what runs the network (:class:`Engine`).
        input_size: network input in pixels (multiple of 32).
        hu_window: (low, high) HU mapped to [0, 1].
        body_crop: crop box parameters (margin, minimum side in mm) or None for the whole slice.
        batch_size: slices per forward pass.
        threshold: probability above which a pixel is lung.
        enhance: the paper's enhancement stage before the network (weights trained with it).
        progress: show a tqdm bar when no ``progress`` callback is given.
        meta: the weights' metadata (empty for a network given in memory).
        model: the torch network (what the engines were built from).
        precision_requested: the precision as asked ("auto", "fp32", "bf16", "int8").
    """

    def __init__(
        self,
        engine: Engine,
        *,
        input_size: int,
        hu_window: tuple[float, float],
        body_crop: dict | None,
        batch_size: int,
        threshold: float = 0.5,
        enhance: bool = False,
        progress: bool = True,
        meta: dict | None = None,
        model: torch.nn.Module | None = None,
        precision_requested: str = "auto",
    ):
        self.engine = engine
        self.meta = meta or {}
        self.model = model
        self.precision_requested = precision_requested
        self.input_size = input_size
        self.hu_window = tuple(hu_window)
        self.body_crop = dict(body_crop) if body_crop else None
        self.batch_size = batch_size
        self.threshold = threshold
        self.enhance = enhance
        self.progress = progress

    @property
    def device(self) -> torch.device:
        """Where the network runs now (CUDA may fall back to the CPU when out of memory)."""
        return self.engine.device

    @property
    def precision(self) -> str:
        """ "fp32", "bf16" or "int8" as used (under ``auto``: as chosen after the first batch)."""
        return self.engine.precision

    @property
    def backend(self) -> str:
        """ "torch", "onnxruntime" or "openvino"; "auto" until the first batch has been timed."""
        return getattr(self.engine, "backend", self.engine.runtime)

    def crop_boxes(self, body: np.ndarray, spacing_yx) -> list:
        return crop_boxes(body, spacing_yx, self.body_crop)

    def network_inputs(self, hu: np.ndarray, index: np.ndarray, spacing_yx, boxes: list) -> tuple[torch.Tensor, list]:
        """Canonical HU slices ``hu[index]`` -> network input on the engine's device, and their frames."""
        return network_inputs(
            hu,
            index,
            spacing_yx,
            boxes,
            self.input_size,
            self.hu_window,
            enhance=self.enhance,
            device=self.engine.device,
        )

    def calibration_inputs(self) -> torch.Tensor:
        """The bundled sample CT's slices as this predictor's network inputs (see :func:`sample_calibration_inputs`)."""
        return sample_calibration_inputs(self.input_size, self.hu_window, self.body_crop, self.enhance)

    @torch.inference_mode()
    def predict(
        self, slices: CanonicalSlices, progress: ProgressFn | None = None, cancel: CancelFn | None = None
    ) -> np.ndarray:
        """Lung mask (Z, H, W) bool for canonical slices, batch by batch (the body mask is computed when
        cropping needs it and none is given; slices outside ``only`` stay empty)."""
        hu, spacing_yx = slices.hu, slices.spacing_yx
        todo = slices.todo()
        n = len(todo)
        body = slices.body_mask() if self.body_crop is not None else slices.body
        boxes = self.crop_boxes(body, spacing_yx) if body is not None else [None] * hu.shape[0]
        mask = np.zeros(hu.shape, dtype=bool)
        bar = None
        if progress is None and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="slice", desc="segmenting")
        z = 0
        if progress is not None:
            self.engine.notify = lambda message: progress(z / n, message)
        try:
            while z < n:
                if cancel is not None and cancel():
                    raise SegmentationCancelled(f"cancelled after {z} of {n} slices")
                z1 = min(n, z + min(self.batch_size, getattr(self.engine, "max_batch", None) or self.batch_size))
                index = todo[z:z1]
                x, frames = self.network_inputs(hu, index, spacing_yx, boxes)
                prob = self.engine.probabilities(x)
                for i, (k, frame) in enumerate(zip(index, frames)):
                    mask[k] = (from_network(prob[i : i + 1], frame)[0] > self.threshold).cpu().numpy()
                z = z1
                if bar is not None:
                    bar.update(z1 - bar.n)
                if progress is not None:
                    progress(z / n, f"slice {z} of {n}")
        finally:
            if bar is not None:
                bar.close()
            self.engine.notify = None
        return mask
