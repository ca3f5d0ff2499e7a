"""HU-threshold baseline: a :class:`~FusionLungSegLib.core.pipeline.Predictor` that calls "air inside the
body" lung, in place of the network.

A reference point for the network (issue 13): if a threshold scores as well, the network buys nothing.
Everything else (reorientation, skipped slices, 3D post-processing with the body rules and lung selection,
the growth into aerated lung, right/left split, QC) is the same pipeline, so a comparison isolates the
network.  :class:`~FusionLungSegLib.segmenter.HUThresholdSegmenter` is its front door.
"""

from __future__ import annotations

import numpy as np

from ..core.pipeline import CancelFn, CanonicalSlices, ProgressFn, SegmentationCancelled

__all__ = ["HUThresholdPredictor", "DEFAULT_THRESHOLD_HU"]

#: Lung parenchyma is about -850 HU, soft tissue above -100: -320 HU is the usual cut between them.
DEFAULT_THRESHOLD_HU = -320.0


class HUThresholdPredictor:
    """Lung candidates = voxels below ``threshold_hu`` (HU) inside the patient's body mask."""

    def __init__(self, threshold_hu: float = DEFAULT_THRESHOLD_HU):
        self.threshold_hu = float(threshold_hu)

    def predict(
        self, slices: CanonicalSlices, progress: ProgressFn | None = None, cancel: CancelFn | None = None
    ) -> np.ndarray:
        """Candidate mask (Z, H, W) bool: HU below the threshold inside the body (``only``: those slices)."""
        if cancel is not None and cancel():
            raise SegmentationCancelled("cancelled before thresholding")
        mask = (np.asarray(slices.hu) < self.threshold_hu) & slices.body_mask()
        if slices.only is not None:
            mask[~np.asarray(slices.only, dtype=bool)] = False
        if progress is not None:
            progress(1.0, f"thresholded {slices.hu.shape[0]} slices")
        return mask
