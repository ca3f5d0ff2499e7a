"""The documented front door: :class:`LungSegmenter` turns a CT ``SimpleITK.Image`` into a lung label map.

A facade over the one pipeline (:func:`FusionLungSegLib.core.pipeline.segment_volume`) and the predictor
the engine factory builds (:func:`FusionLungSegLib.engines.factory.make_predictor`); it holds no
segmentation logic of its own.  Labels: 0 background, 1 right lung, 2 left lung.
:class:`HUThresholdSegmenter` is the same front door on the HU-threshold baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from .core.labels import LEFT_LUNG, RIGHT_LUNG
from .core.pipeline import (
    CancelFn,
    CanonicalSlices,
    PipelineOptions,
    Predictor,
    ProgressFn,
    SegmentationCancelled,
    SegmentationResult,
    segment_volume,
)
from .core.terminology import LUNG_SEGMENTS
from .core.validation import InvalidInputError, check_hu_range, validate_ct
from .engines.factory import default_batch_size, make_predictor
from .engines.threshold import DEFAULT_THRESHOLD_HU, HUThresholdPredictor

__all__ = [
    "LungSegmenter",
    "HUThresholdSegmenter",
    "SegmentationResult",
    "SegmentationCancelled",
    "InvalidInputError",
    "validate_ct",
    "check_hu_range",
    "default_batch_size",
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "LABEL_NAMES",
    "DEFAULT_THRESHOLD_HU",
    "segmentation_report",
]

LABEL_NAMES = {s.value: s.name for s in LUNG_SEGMENTS}  # label value -> segment name


class _Segmenter:
    """What every segmenter offers: run the pipeline with its ``predictor``, on an image or a file."""

    predictor: Predictor
    skip_slices: bool = True

    def __init__(self, predictor: Predictor, skip_slices: bool = True):
        self.predictor = predictor
        self.skip_slices = skip_slices
        #: seconds per stage of the last :meth:`run`: checks_and_reorient, body_mask_and_skip, slices
        #: (crop + preprocess + network + back to the slice grid), postprocess_and_qc
        self.last_timings: dict[str, float] = {}
        self.last_result: SegmentationResult | None = None

    def predict_canonical(
        self,
        hu: np.ndarray,
        spacing_yx: tuple[float, float] | None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        body: np.ndarray | None = None,
        only: np.ndarray | None = None,
    ) -> np.ndarray:
        """Lung mask (Z, H, W) bool for canonical HU slices (Z, H, W): the predictor alone, without
        post-processing (see :class:`~FusionLungSegLib.core.pipeline.Predictor`).  ``spacing_yx`` in mm
        (None: unknown); ``body``: the canonical body mask (computed when needed); ``only``: bool per slice."""
        return self.predictor.predict(CanonicalSlices(hu, spacing_yx, body, only), progress, cancel)

    def run(self, image, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> SegmentationResult:
        """Segment a 3D CT (HU) ``SimpleITK.Image``: labels on the same grid, lung volumes and a QC verdict.

        ``progress(fraction, message)`` is called after each batch (fraction in
        [0, 1]); ``cancel()`` returning True raises :class:`SegmentationCancelled`
        before the next batch.  The input image is not modified.
        """
        self.last_timings = {}
        result = segment_volume(image, self.predictor, PipelineOptions(skip_slices=self.skip_slices), progress, cancel)
        self.last_timings = result.timings
        return result

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


class LungSegmenter(_Segmenter):
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
            (neck, abdomen, pelvis); see :func:`FusionLungSegLib.core.body.slices_that_may_hold_lung`.
        precision: "auto", "fp32", "bf16" (bf16 autocast around the forward pass; probabilities
            stay fp32) or "int8" (ONNX Runtime or OpenVINO on the CPU, a statically quantized graph;
            needs the ``onnx`` or ``openvino`` extra). ``auto``: bf16 on CUDA; on the CPU, bf16 where it
            has bf16 matrix units, else fp32, and, with onnxruntime installed and weights used at a size
            they were trained at, int8 instead when it runs the first batch faster (remembered per machine).
            bf16 on a CPU without bf16 units works but warns: it is several times slower.
        backend: "auto" (on the CPU: whichever of torch and the installed engines that run the
            precision, ONNX Runtime and OpenVINO, runs the first batch fastest, remembered per machine),
            "torch", "onnxruntime" or "openvino" (the ONNX graph is exported from the loaded weights at
            first use and cached; see :mod:`FusionLungSegLib.engines`).
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
        predictor = make_predictor(
            weights,
            device,
            batch_size,
            input_size,
            progress,
            model=model,
            sha256=sha256,
            hu_window=hu_window,
            threshold=threshold,
            body_crop=body_crop,
            precision=precision,
            backend=backend,
        )
        super().__init__(predictor, skip_slices)

    #: Read-only views of what the predictor holds (see :class:`~FusionLungSegLib.engines.network.NetworkPredictor`):
    #: ``device`` (the torch device the network runs on now; CUDA may fall back to the CPU when out of memory),
    #: ``precision`` ("fp32", "bf16" or "int8" as used; under ``auto`` it may turn to "int8" once the first
    #: batch has been timed), ``precision_requested``, ``backend`` ("torch", "onnxruntime" or "openvino";
    #: "auto" until the first batch), ``engine``, ``model``, ``meta`` (the weights' metadata), ``input_size``,
    #: ``batch_size``, ``hu_window``, ``body_crop``, ``threshold``, ``enhance`` and ``progress``.
    VIEWS = (
        "device",
        "precision",
        "precision_requested",
        "backend",
        "engine",
        "model",
        "meta",
        "input_size",
        "batch_size",
        "hu_window",
        "body_crop",
        "threshold",
        "enhance",
        "progress",
    )

    def __getattr__(self, name: str):
        if name in LungSegmenter.VIEWS and "predictor" in self.__dict__:
            return getattr(self.predictor, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def calibration_inputs(self):
        """The bundled sample CT's slices as this segmenter's network inputs (N, 1, S, S)."""
        return self.predictor.calibration_inputs()


class HUThresholdSegmenter(_Segmenter):
    """The HU-threshold baseline behind the same front door: lung candidates are voxels below
    ``threshold_hu`` inside the body, then the same pipeline (:mod:`FusionLungSegLib.engines.threshold`).

    Args:
        threshold_hu: HU below which a voxel inside the body is a lung candidate.
        skip_slices: as :class:`LungSegmenter` (slices far from lung-sized air get no candidates).
        progress: accepted for the same call shape; the threshold needs no progress bar.
    """

    #: what the front doors report about the run (no network, no engine)
    device = "cpu"
    precision = precision_requested = "fp32"
    backend = "none"
    input_size = None
    batch_size = None

    def __init__(self, threshold_hu: float = DEFAULT_THRESHOLD_HU, skip_slices: bool = True, progress: bool = False):
        super().__init__(HUThresholdPredictor(threshold_hu), skip_slices)
        self.threshold_hu = float(threshold_hu)
        self.meta = {"architecture": "HU threshold", "threshold_hu": self.threshold_hu, "seed": 0}


def segmentation_report(image, result: SegmentationResult, segmenter: _Segmenter, seconds: float) -> dict:
    """What a front door reports of one run (``segment --json``, each case of ``batch``): lung volumes in mL,
    slices, seconds, the device, input size, precision and engine the run used, and the QC verdict."""
    volumes = result.volumes_ml
    return {
        "right_lung_ml": volumes["right lung"],
        "left_lung_ml": volumes["left lung"],
        "slices": int(image.GetSize()[2]),
        "seconds": round(seconds, 1),
        "device": str(segmenter.device),
        "input_size": segmenter.input_size,
        "slices_skipped": result.qc["measures"].get("slices_skipped", 0),
        "qc": result.qc,
        "precision": segmenter.precision,
        "backend": segmenter.backend,
    }
