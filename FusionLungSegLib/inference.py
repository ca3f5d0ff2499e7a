"""Volume inference: :class:`LungSegmenter` turns a CT ``SimpleITK.Image`` into a lung label map.

Pipeline: validate -> reorient to canonical axial order (no resampling) ->
batches of slices through FusionLungNet -> probabilities back to each slice's
grid -> 3D post-processing and right/left split -> labels on the input's own
grid (same size, spacing, origin and direction).  Labels: 0 background,
1 right lung, 2 left lung.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .body import BODY_CROP, body_mask, crop_box, slices_that_may_hold_lung
from .geometry import AxialReorientation
from .hardware import resolve_precision
from .model import build_model
from .onnx_backend import (
    ENGINE_NAMES,
    ENGINE_PRECISIONS,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    engines_for,
    requested_backend,
    resolve_backend,
    weights_key,
)
from .postprocess import LEFT_LUNG, RIGHT_LUNG, postprocess_with_report
from .preprocess import HU_WINDOW, enhance_slices, from_network, to_network
from .terminology import LUNG_SEGMENTS
from .train import resolve_device
from .weights import load_weights

__all__ = [
    "LungSegmenter",
    "SegmentationResult",
    "SegmentationCancelled",
    "InvalidInputError",
    "validate_ct",
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "LABEL_NAMES",
]

log = logging.getLogger(__name__)

# numpy dtypes that torch.from_numpy takes and window_hu handles; anything else is cast to float32.
_TENSOR_DTYPES = tuple(np.dtype(t) for t in ("int8", "uint8", "int16", "int32", "int64", "float32", "float64"))

LABEL_NAMES = {s.value: s.name for s in LUNG_SEGMENTS}  # label value -> segment name

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class SegmentationCancelled(RuntimeError):
    """Raised when the ``cancel`` callback asked to stop."""


class InvalidInputError(ValueError):
    """The input is not a CT volume this model can segment; the message says why."""


def validate_ct(image) -> bool:
    """Raise :class:`InvalidInputError` unless ``image`` looks like a 3D CT in HU.

    Returns False for a valid image that holds nothing but air (no lungs to find).
    """
    import SimpleITK as sitk

    if not isinstance(image, sitk.Image):
        raise InvalidInputError(f"expected a SimpleITK.Image, got {type(image).__name__}")
    dim = image.GetDimension()
    if dim != 3:
        raise InvalidInputError(
            f"expected a 3D CT volume, got a {dim}D image of size {image.GetSize()}"
            + ("; for a single slice, stack it into a volume with SimpleITK.JoinSeries" if dim == 2 else "")
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"expected a scalar CT, got {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(a colour or vector image)"
        )
    if 0 in image.GetSize():
        raise InvalidInputError(f"the image is empty (size {image.GetSize()})")
    spacing = np.asarray(image.GetSpacing(), float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidInputError(f"voxel spacing must be positive, got {tuple(spacing)}")
    return check_hu_range(sitk.GetArrayViewFromImage(image))


def check_hu_range(array: np.ndarray) -> bool:
    """Raise :class:`InvalidInputError` for a label map or values that are not CT in HU.

    Looks at a strided sample, so it costs little on large volumes.  Returns
    False when the image is nothing but air (valid, but there is nothing to segment).
    """
    step = max(1, int(round((array.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(array[::step, ::step, ::step])
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    if finite.size == 0:
        raise InvalidInputError("the image holds no finite values (all NaN or infinite)")
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:
        if lo <= -500:
            return False  # all air: valid, the result is empty
        raise InvalidInputError(f"the image is constant ({lo:g}); a CT in HU has air near -1000 and tissue near 0")
    if sample.dtype.kind in "iub" and lo >= 0 and hi <= 255 and np.unique(finite).size <= 16:
        raise InvalidInputError(
            f"this looks like a label map or mask (only {np.unique(finite).size} distinct values between "
            f"{lo:g} and {hi:g}), not a CT; choose the CT volume as input"
        )
    if np.percentile(finite, 1) > -300:
        raise InvalidInputError(
            f"values range from {lo:g} to {hi:g}, but a chest CT in Hounsfield units has air and lungs "
            "near -1000 HU. This may be an MR image or a CT stored without its rescale slope/intercept "
            "(e.g. unsigned values shifted by +1024): convert it to HU first"
        )
    return True


def default_batch_size(device: torch.device, input_size: int) -> int:
    """Slices per forward pass: 32 on CUDA; on the CPU 4 at 160 px, fewer for larger input
    (the same speed per slice, and at 320 px batch 1 keeps about 640 MB of activations less than batch 4)."""
    if device.type == "cuda":
        return 32
    return min(8, max(1, int(4 * (160 / input_size) ** 2)))


class LungSegmenter:
    """Segment right and left lungs in chest CT.

    Args:
        weights: path of a weights file; None = the bundled model (checked by sha256).
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
        batch_size: slices per forward pass; None = 32 on CUDA, on the CPU 4 at 160 px and 1 at 320 px.
        input_size: network input in pixels (multiple of 32); None = the size the
            weights were trained at (stored in their metadata), else 320.
        progress: show a tqdm bar when no ``progress`` callback is given.
        model: an already built network (for tests or custom training); skips ``weights``.
        sha256: expected hash of a non-bundled ``weights`` file.
        body_crop: crop each slice to the patient's body before the network (None = as the
            weights were trained, from their metadata).
        skip_slices: skip the network on slices far from any lung-sized air inside the body
            (neck, abdomen, pelvis); see :func:`body.slices_that_may_hold_lung`.
        precision: "auto", "fp32", "bf16" (bf16 autocast around the forward pass; probabilities
            stay fp32) or "int8" (ONNX Runtime or OpenVINO on the CPU, a statically quantized graph;
            needs the ``onnx`` or ``openvino`` extra). ``auto``: bf16 on CUDA; on the CPU, bf16 where it
            has bf16 matrix units, else fp32, and, with onnxruntime installed and weights used at a size
            they were trained at, int8 instead when it runs the first batch faster (remembered per machine).
            bf16 on a CPU without bf16 units works but warns: it is several times slower.
        backend: "auto" (on the CPU: whichever of torch and the installed engines that run the
            precision, ONNX Runtime and OpenVINO, runs the first batch fastest, remembered per machine),
            "torch", "onnxruntime" or "openvino" (the ONNX graph is exported from the loaded weights at
            first use and cached; see :mod:`FusionLungSegLib.onnx_backend`).
    """

    def __init__(
        self,
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
        skip_slices: bool = True,
        precision: str = "auto",
        backend: str = "auto",
    ):
        self.device = resolve_device(device)
        from_file = model is None
        #: as asked ("auto", "fp32", "bf16", "int8") and as used ("fp32", "bf16" or "int8") on ``self.device``;
        #: under "auto" on the CPU it may turn to "int8" when the first batch has been timed
        self.precision_requested = (precision or "auto").lower()
        if self.precision_requested == "int8":
            self.precision = "int8"
        else:
            self.precision = resolve_precision(precision, self.device)
        meta: dict = {}
        if model is None:
            state, meta = load_weights(weights, sha256)
            from .weights import WeightsError

            architecture = meta.get("architecture") or "FusionLungNet"  # stored by `train`, so never named twice
            try:
                model = build_model(architecture, **(meta.get("arch_options") or {}))
            except ValueError as exc:
                raise WeightsError(f"{weights or 'bundled weights'}: {exc}") from None
            try:
                model.load_state_dict(state)  # copies (and casts fp16 -> fp32) into the parameters
            except RuntimeError as exc:
                raise WeightsError(
                    f"{weights or 'bundled weights'}: state dict does not fit {architecture} "
                    f"({str(exc).splitlines()[0]})"
                ) from None
            del state
        self.meta = meta
        # channels-last lets oneDNN/cuDNN pick their fastest convolutions (about 10 % on CPU).
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.input_size = int(input_size or meta.get("input_size") or 320)
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (e.g. 160 or 320), got {self.input_size}")
        trained = meta.get("input_size")
        if trained:
            lo = int(meta.get("min_input_size") or trained)
            if not lo <= self.input_size <= int(trained):
                sizes = f"{lo}-{trained}" if lo != int(trained) else f"{trained}"
                warnings.warn(
                    f"these weights were trained at {sizes} px input, not {self.input_size} px: expect "
                    f"worse results (leave input_size unset to use {trained})",
                    stacklevel=2,
                )
        self.hu_window = tuple(hu_window or meta.get("hu_window") or HU_WINDOW)
        self.batch_size = int(batch_size or default_batch_size(self.device, self.input_size))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.progress = progress
        self.threshold = threshold
        #: crop box parameters (margin, minimum side in mm) or None for the whole slice
        crop = meta.get("body_crop") if body_crop is None else (BODY_CROP if body_crop else None)
        self.body_crop: dict | None = dict(crop) if crop else None
        self.skip_slices = skip_slices
        #: the paper's enhancement stage before the network, when the weights were trained with it
        self.enhance = bool(meta.get("enhancement"))
        #: "torch", "onnxruntime" or "openvino"; "auto" until the first batch has been timed on each
        pinned = requested_backend(backend)
        int8_may_pay = self.precision_requested == "auto" and self._int8_may_pay(backend)
        if self.precision_requested == "auto" and pinned in ENGINE_PRECISIONS:
            if int8_may_pay:
                self.precision = "int8"
            elif self.precision not in ENGINE_PRECISIONS[pinned]:
                self.precision = "fp32"  # ONNX Runtime has no bf16
        self.backend = resolve_backend(backend, self.device, self.precision)
        engine_precision = self.precision
        if int8_may_pay and self.backend not in ENGINE_PRECISIONS:
            self.backend, engine_precision = "auto", "int8"  # torch (bf16 or fp32) against int8, timed
        engines = [self.backend] if self.backend in ENGINE_PRECISIONS else []
        if self.backend == "auto":
            engines = engines_for(self.device, engine_precision)
        key = weights_key(weights, sha256, None if from_file else self.model)
        #: the engines besides torch this segmenter may run: one, or the candidates of ``auto``
        self._engines = [
            (OpenVinoEngine if name == "openvino" else OnnxRuntimeEngine)(
                self.model, key, self.input_size, precision=engine_precision, calibration=self.calibration_inputs
            )
            for name in engines
        ]
        #: the engine that runs the network when it is not torch (before ``auto`` decides: the first candidate)
        self._onnx = self._engines[0] if self._engines else None
        #: seconds per stage of the last :meth:`run`: checks_and_reorient, body_mask_and_skip, slices
        #: (crop + preprocess + network + back to the slice grid), postprocess_and_qc
        self.last_timings: dict[str, float] = {}
        self.last_result: SegmentationResult | None = None

    def _int8_may_pay(self, backend: str | None) -> bool:
        """Whether ``auto`` should time int8 against torch: on the CPU, with onnxruntime, the engine not
        pinned to torch, and weights from a file run at a size they were trained at (int8 masks are checked
        against fp32 there; outside that range the network is less sure and int8 moves more voxels)."""
        from .onnx_backend import available

        trained = self.meta.get("input_size")
        if self.device.type != "cpu" or not trained or not available():
            return False
        if requested_backend(backend) == "torch":  # pinned (argument or FUSIONLUNGSEG_BACKEND)
            return False
        return int(self.meta.get("min_input_size") or trained) <= self.input_size <= int(trained)

    def calibration_inputs(self) -> torch.Tensor:
        """The bundled sample CT's slices as network inputs (N, 1, S, S), prepared as :meth:`run` prepares
        slices: the real chest CT from which the int8 graph takes its activation ranges."""
        import SimpleITK as sitk

        from .io import read_image
        from .resources import sample_ct_path

        image = read_image(sample_ct_path())
        reo = AxialReorientation.from_image(image)
        hu = reo.to_canonical(sitk.GetArrayViewFromImage(image))
        spacing_yx = reo.spacing_zyx[1:]
        boxes = self.crop_boxes(body_mask(hu, reo.spacing_zyx), spacing_yx)
        x, _ = self._network_inputs(hu, np.arange(hu.shape[0]), spacing_yx, boxes)
        return x.cpu()

    # ------------------------------------------------------------ network
    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) network input -> (N, 1, S, S) probabilities on the model's device."""
        if self._onnx is not None and self.device.type == "cpu":
            if self.backend == "auto":  # first batch: time the candidates on it, or reuse this machine's verdict
                torch_runs = self.precision != "int8"
                try:
                    self.backend = self._onnx.choose(
                        x, self._torch_logits if torch_runs else None, self.precision, rivals=self._engines[1:]
                    )
                except Exception as exc:
                    if not torch_runs:  # int8 asked for by name: torch cannot stand in
                        raise
                    names = " and ".join(ENGINE_NAMES[e.runtime] for e in self._engines)
                    warnings.warn(
                        f"{names} could not be prepared ({type(exc).__name__}: {exc}); running in torch", stacklevel=3
                    )
                    self.backend, self._onnx, self._engines = "torch", None, []
                for engine in self._engines:
                    if engine.runtime != self.backend:
                        engine.release()  # the engines not chosen free their compiled graphs
                if self.backend in ENGINE_PRECISIONS:
                    self._onnx = next(e for e in self._engines if e.runtime == self.backend)
                    self.precision = self._onnx.precision
            if self.backend in ENGINE_PRECISIONS:
                return torch.sigmoid(self._onnx.logits(x))
        return torch.sigmoid(self._torch_logits(x).float())

    def _torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        if cuda and x.device.type == "cpu":
            x = x.pin_memory()  # page-locked, so the copy below runs asynchronously (CUDA tensors cannot be pinned)
        x = x.to(self.device, non_blocking=cuda).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _forward_with_retry(self, x: torch.Tensor) -> torch.Tensor:
        """Run a batch; on CUDA out-of-memory halve the batch, and at batch 1 fall back to CPU."""
        try:
            return self._forward(x)
        except torch.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            if x.shape[0] > 1:
                self.batch_size = max(1, x.shape[0] // 2)
                warnings.warn(f"CUDA out of memory: retrying with batch size {self.batch_size}", stacklevel=2)
                parts = [self._forward_with_retry(part) for part in x.split(self.batch_size)]
                return torch.cat([part.to(parts[-1].device) for part in parts])  # a later part may run on the CPU
            warnings.warn("CUDA out of memory at batch size 1: continuing on the CPU", stacklevel=2)
            self.device = torch.device("cpu")
            self.model = self.model.cpu()
            self.precision = resolve_precision(self.precision_requested, self.device)
            return self._forward(x)

    def crop_boxes(self, body: np.ndarray, spacing_yx) -> list:
        """The network's box on each slice of a canonical body mask (None everywhere without cropping)."""
        if self.body_crop is None:
            return [None] * body.shape[0]
        return [crop_box(body[z], spacing_yx, **self.body_crop) for z in range(body.shape[0])]

    def _network_inputs(self, hu: np.ndarray, index: np.ndarray, spacing_yx, boxes: list) -> tuple[torch.Tensor, list]:
        """Canonical HU slices ``hu[index]`` -> network input (N, 1, S, S) on the model's device, and each
        slice's frame for :func:`from_network`."""
        # One batch at a time, in its own dtype (int16 CT moves half the bytes of float32);
        # windowing, resizing and thresholding run on the model's device.
        batch = np.array(hu[index])
        if self.enhance:
            batch = enhance_slices(batch)
        if batch.dtype not in _TENSOR_DTYPES:
            batch = batch.astype(np.float32)
        batch = torch.from_numpy(batch)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        # Each slice has its own crop box: prepare slice by slice, run the network on the batch.
        pairs = [
            to_network(batch[i : i + 1], self.input_size, spacing_yx, self.hu_window, boxes[k])
            for i, k in enumerate(index)
        ]
        return torch.cat([x for x, _ in pairs]), [frame for _, frame in pairs]

    @torch.inference_mode()
    def predict_canonical(
        self,
        hu: np.ndarray,
        spacing_yx: tuple[float, float] | None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        body: np.ndarray | None = None,
        only: np.ndarray | None = None,
    ) -> np.ndarray:
        """Lung mask (Z, H, W) bool for canonical HU slices (Z, H, W), batch by batch.

        ``spacing_yx`` in mm (None: unknown, square pixels); ``body``, the canonical
        body mask, is computed here when cropping needs it and none is given;
        ``only`` (bool per slice) limits the network to those slices (the others stay empty).
        """
        todo = np.arange(hu.shape[0]) if only is None else np.flatnonzero(only)
        n = len(todo)
        if self.body_crop is not None and body is None:
            body = body_mask(hu, None if spacing_yx is None else (1.0, *spacing_yx))
        boxes = self.crop_boxes(body, spacing_yx) if body is not None else [None] * hu.shape[0]
        mask = np.zeros(hu.shape, dtype=bool)
        bar = None
        if progress is None and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="slice", desc="segmenting")
        z = 0
        if progress is not None:
            for engine in self._engines:
                engine.notify = lambda message: progress(z / n, message)
        try:
            while z < n:
                if cancel is not None and cancel():
                    raise SegmentationCancelled(f"cancelled after {z} of {n} slices")
                z1 = min(n, z + self.batch_size)
                index = todo[z:z1]
                x, frames = self._network_inputs(hu, index, spacing_yx, boxes)
                prob = self._forward_with_retry(x)
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
            for engine in self._engines:
                engine.notify = None
        return mask

    # ------------------------------------------------------------ volume
    def run(self, image, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> SegmentationResult:
        """Segment a 3D CT (HU) ``SimpleITK.Image``: labels on the same grid, lung volumes and a QC verdict.

        ``progress(fraction, message)`` is called after each batch (fraction in
        [0, 1]); ``cancel()`` returning True raises :class:`SegmentationCancelled`
        before the next batch.  The input image is not modified.
        """
        import SimpleITK as sitk

        from .qc import quality_check

        clock = time.perf_counter
        t0 = clock()
        self.last_timings = {}
        has_content = validate_ct(image)
        if not has_content:
            out = sitk.Image(image.GetSize(), sitk.sitkUInt8)
            out.CopyInformation(image)
            if progress is not None:
                progress(1.0, "no tissue in the image: nothing to segment")
            spacing = tuple(reversed(image.GetSpacing()))
            return SegmentationResult(out, quality_check(np.zeros((1, 1, 1), np.uint8), spacing))
        reo = AxialReorientation.from_image(image)
        hu = reo.to_canonical(sitk.GetArrayViewFromImage(image))

        def report(fraction: float, message: str) -> None:
            if progress is not None:
                progress(0.95 * fraction, message)

        t_body = clock()
        body = body_mask(hu, reo.spacing_zyx)
        only = slices_that_may_hold_lung(hu, body, reo.spacing_zyx) if self.skip_slices else None
        t1 = clock()
        mask = self.predict_canonical(
            hu, reo.spacing_zyx[1:], report if progress else None, cancel, body=body, only=only
        )
        if cancel is not None and cancel():
            raise SegmentationCancelled("cancelled before post-processing")
        if progress is not None:
            progress(0.95, "post-processing")
        t2 = clock()
        labels, removed = postprocess_with_report(mask, reo.spacing_zyx, threshold=0.5, hu=hu, body=body)
        del mask
        qc = quality_check(labels, reo.spacing_zyx, body, removed, hu=hu)
        qc["measures"]["slices_skipped"] = 0 if only is None else int(np.count_nonzero(~only))
        out = sitk.GetImageFromArray(np.ascontiguousarray(reo.from_canonical(labels)))
        out.CopyInformation(image)
        self.last_timings = {
            "checks_and_reorient": t_body - t0,
            "body_mask_and_skip": t1 - t_body,
            "slices": t2 - t1,
            "postprocess_and_qc": clock() - t2,
        }
        if progress is not None:
            progress(1.0, "done")
        return SegmentationResult(out, qc)

    def segment(self, image, progress: ProgressFn | None = None, cancel: CancelFn | None = None):
        """Segment a 3D CT (HU) ``SimpleITK.Image``; returns a uint8 label image on the same grid.

        Same as :meth:`run` without the volumes and the QC verdict (kept in ``last_result``).
        """
        self.last_result = self.run(image, progress, cancel)
        return self.last_result.labels

    def segment_file(self, input_path: str | Path, output_path: str | Path, progress: ProgressFn | None = None):
        """Read ``input_path`` (file or DICOM folder), segment, write the label map atomically."""
        from .io import read_image, write_image

        labels = self.segment(read_image(input_path), progress=progress)
        write_image(labels, output_path)
        return labels


@dataclass
class SegmentationResult:
    """What :meth:`LungSegmenter.run` returns.

    ``labels``: uint8 ``SimpleITK.Image`` on the input's grid (0, 1 right lung, 2 left lung);
    ``qc``: ``{"ok", "flags", "notes", "measures"}`` (see :func:`qc.quality_check`).
    """

    labels: object
    qc: dict

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Lung volumes in mL: ``{"right lung", "left lung", "lungs"}``."""
        m = self.qc["measures"]
        right, left = m.get("right_lung_ml", 0.0), m.get("left_lung_ml", 0.0)
        return {"right lung": right, "left lung": left, "lungs": round(right + left, 1)}
