"""HU-threshold baseline: the lung pipeline with the network replaced by "air inside the body".

A reference point for the network (issue 13): if a threshold scores as well, the network buys nothing.
:class:`HUThresholdSegmenter` is a :class:`~FusionLungSegLib.inference.LungSegmenter` whose per-slice
step is ``HU < threshold_hu`` inside the patient's body mask (:func:`body.body_mask`); everything else
(reorientation, skipped slices, 3D post-processing with the body rules and lung selection, the growth
into aerated lung, right/left split, QC) is the same code, so a comparison isolates the network.
"""

from __future__ import annotations

import numpy as np

from .body import body_mask
from .inference import CancelFn, LungSegmenter, ProgressFn, SegmentationCancelled

__all__ = ["HUThresholdSegmenter", "DEFAULT_THRESHOLD_HU"]

#: Lung parenchyma is about -850 HU, soft tissue above -100: -320 HU is the usual cut between them.
DEFAULT_THRESHOLD_HU = -320.0


class HUThresholdSegmenter(LungSegmenter):
    """Lung candidates = voxels below ``threshold_hu`` inside the body; the rest as :class:`LungSegmenter`.

    Args:
        threshold_hu: HU below which a voxel inside the body is a lung candidate.
        skip_slices: as :class:`LungSegmenter` (slices far from lung-sized air get no candidates).
        progress: accepted for the same call shape; the threshold needs no progress bar.
    """

    def __init__(self, threshold_hu: float = DEFAULT_THRESHOLD_HU, skip_slices: bool = True, progress: bool = False):
        import torch

        # No network: the attributes LungSegmenter.run and the front doors read.
        self.device = torch.device("cpu")
        self.precision_requested = self.precision = "fp32"
        self.backend = "none"
        self.model = None
        self._onnx = None
        self._engines: list = []
        self.threshold_hu = float(threshold_hu)
        self.meta = {"architecture": "HU threshold", "threshold_hu": self.threshold_hu, "seed": 0}
        self.input_size = None
        self.hu_window = None
        self.batch_size = 1
        self.progress = progress
        self.threshold = 0.5
        self.body_crop = None
        self.skip_slices = skip_slices
        self.last_timings: dict[str, float] = {}
        self.last_result = None

    def predict_canonical(
        self,
        hu: np.ndarray,
        spacing_yx: tuple[float, float] | None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        body: np.ndarray | None = None,
        only: np.ndarray | None = None,
    ) -> np.ndarray:
        """Candidate mask (Z, H, W) bool: HU below the threshold inside the body (``only``: those slices)."""
        if cancel is not None and cancel():
            raise SegmentationCancelled("cancelled before thresholding")
        if body is None:
            body = body_mask(hu, None if spacing_yx is None else (1.0, *spacing_yx))
        mask = (np.asarray(hu) < self.threshold_hu) & body
        if only is not None:
            mask[~np.asarray(only, dtype=bool)] = False
        if progress is not None:
            progress(1.0, f"thresholded {hu.shape[0]} slices")
        return mask
