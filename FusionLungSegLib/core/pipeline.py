"""The segmentation pipeline, stateless: :func:`segment_volume` takes a CT and a :class:`Predictor` and
returns labels on the input's grid with a QC verdict.

Steps: validate -> reorient to canonical axial order (no resampling) -> the patient's body and the slices
that may hold lung -> the predictor on those slices -> 3D post-processing and the right/left split -> QC ->
labels back on the input's own grid (same size, spacing, origin and direction).  Labels: 0 background,
1 right lung, 2 left lung.  Every front door (the :class:`~FusionLungSegLib.segmenter.LungSegmenter`
facade, the CLI, the Slicer logic, batch runs) goes through this one function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from .body import body_mask, slices_that_may_hold_lung
from .geometry import AxialReorientation
from .postprocess import postprocess_with_report
from .qc import quality_check
from .validation import validate_ct

__all__ = [
    "CancelFn",
    "CanonicalSlices",
    "Predictor",
    "ProgressFn",
    "PipelineOptions",
    "SegmentationCancelled",
    "SegmentationResult",
    "segment_volume",
]

#: ``progress(fraction, message)``: fraction in [0, 1]
ProgressFn = Callable[[float, str], None]
#: ``cancel()`` returning True stops the run before its next batch of slices
CancelFn = Callable[[], bool]


class SegmentationCancelled(RuntimeError):
    """Raised when the ``cancel`` callback asked to stop."""


@dataclass
class CanonicalSlices:
    """Axial slices for a predictor, in canonical order (see :mod:`.geometry`).

    ``hu``: (Z, H, W) CT in HU; ``spacing_yx``: in-plane pixel size in mm (None: unknown, square pixels);
    ``body``: the canonical body mask (None: the predictor computes one if it needs it); ``only``: bool per
    slice, the slices to look at (None: all; the others stay empty).
    """

    hu: np.ndarray
    spacing_yx: tuple[float, float] | None
    body: np.ndarray | None = None
    only: np.ndarray | None = None

    def body_mask(self) -> np.ndarray:
        """The body mask: the one given, else computed from the slices."""
        if self.body is None:
            self.body = body_mask(self.hu, None if self.spacing_yx is None else (1.0, *self.spacing_yx))
        return self.body

    def todo(self) -> np.ndarray:
        """Indices of the slices to look at."""
        return np.arange(self.hu.shape[0]) if self.only is None else np.flatnonzero(self.only)


@runtime_checkable
class Predictor(Protocol):
    """What finds lung on slices: canonical slices in, a lung mask (Z, H, W) bool out.

    A network predictor thresholds its probabilities slice by slice (one byte per voxel held, not four);
    the HU-threshold baseline applies its rule.  ``progress(fraction, message)`` as slices are done;
    ``cancel()`` returning True stops before the next batch with :class:`SegmentationCancelled`.
    """

    def predict(self, slices: CanonicalSlices, progress: ProgressFn | None = None, cancel: CancelFn | None = None): ...


@dataclass(frozen=True)
class PipelineOptions:
    """How :func:`segment_volume` runs, besides the predictor.

    ``skip_slices``: run the predictor only on slices that may hold lung (lung-sized air inside the body
    nearby; see :func:`~FusionLungSegLib.core.body.slices_that_may_hold_lung`); the neck, abdomen and pelvis
    are left out.
    """

    skip_slices: bool = True


@dataclass
class SegmentationResult:
    """What :func:`segment_volume` returns.

    ``labels``: uint8 ``SimpleITK.Image`` on the input's grid (0, 1 right lung, 2 left lung);
    ``qc``: ``{"ok", "flags", "notes", "measures"}`` (see :func:`~FusionLungSegLib.core.qc.quality_check`);
    ``timings``: seconds per stage (checks_and_reorient, body_mask_and_skip, slices, postprocess_and_qc).
    """

    labels: object
    qc: dict
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Lung volumes in mL: ``{"right lung", "left lung", "lungs"}``."""
        m = self.qc["measures"]
        right, left = m.get("right_lung_ml", 0.0), m.get("left_lung_ml", 0.0)
        return {"right lung": right, "left lung": left, "lungs": round(right + left, 1)}


def segment_volume(
    image,
    predictor: Predictor,
    options: PipelineOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> SegmentationResult:
    """Segment the lungs of a 3D CT (HU) ``SimpleITK.Image`` with ``predictor``; the input is not modified.

    ``progress(fraction, message)`` is called as slices are done (fraction in [0, 1]); ``cancel()``
    returning True raises :class:`SegmentationCancelled` before the next batch.  Raises
    :class:`~FusionLungSegLib.core.validation.InvalidInputError` for input that is not a CT in HU.
    """
    import SimpleITK as sitk

    options = options or PipelineOptions()
    clock = time.perf_counter
    t0 = clock()
    if not validate_ct(image):  # nothing but air: a valid, empty result
        out = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        out.CopyInformation(image)
        if progress is not None:
            progress(1.0, "no tissue in the image: nothing to segment")
        spacing = tuple(reversed(image.GetSpacing()))
        return SegmentationResult(out, quality_check(np.zeros((1, 1, 1), np.uint8), spacing))
    reo = AxialReorientation.from_image(image)
    hu = reo.to_canonical(sitk.GetArrayViewFromImage(image))

    def report(fraction: float, message: str) -> None:
        progress(0.95 * fraction, message)

    t_body = clock()
    body = body_mask(hu, reo.spacing_zyx)
    only = slices_that_may_hold_lung(hu, body, reo.spacing_zyx) if options.skip_slices else None
    t1 = clock()
    mask = predictor.predict(CanonicalSlices(hu, reo.spacing_zyx[1:], body, only), report if progress else None, cancel)
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
    timings = {
        "checks_and_reorient": t_body - t0,
        "body_mask_and_skip": t1 - t_body,
        "slices": t2 - t1,
        "postprocess_and_qc": clock() - t2,
    }
    if progress is not None:
        progress(1.0, "done")
    return SegmentationResult(out, qc, timings)
