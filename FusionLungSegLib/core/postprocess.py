"""3D post-processing of a canonical ``[z, y, x]`` lung mask: airways out, the lungs kept
(:mod:`.lungs`), grown into aerated lung, holes filled, and right and left decided (:mod:`.sides`).

In canonical order x runs from the patient's right to the patient's left
(see :mod:`.geometry`), so "right lung" is decided in patient coordinates.
"""

from __future__ import annotations

import numpy as np

from .body import body_mask
from .components import midline_x
from .labels import LEFT_LUNG, RIGHT_LUNG
from .lungs import SelectionReport, clean_lung_mask, grow_into_aerated_lung, select_lungs
from .masks import bounding_box, fill_holes_axial
from .sides import cut_field_midline, split_right_left, split_sides

__all__ = [
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "body_mask",
    "clean_lung_mask",
    "select_lungs",
    "grow_into_aerated_lung",
    "SelectionReport",
    "remove_central_airways",
    "split_right_left",
    "split_sides",
    "postprocess",
    "postprocess_with_report",
]


def remove_central_airways(
    mask: np.ndarray,
    spacing_zyx,
    max_area_mm2: float = 600.0,
    max_offset_mm: float = 25.0,
    cut_field_midline: float | None = None,
    hu: np.ndarray | None = None,
    max_median_hu: float = -950.0,
) -> np.ndarray:
    """Drop trachea and main-bronchus cross-sections: small, compact 2D components near the midline.

    On each axial slice, a component smaller than ``max_area_mm2`` whose centroid
    lies within ``max_offset_mm`` of the midline (the mean x of the whole lung
    mask) and that fills at least half of its bounding box is airway, not lung.
    Lung apices are lateral, so they are kept.  Where a field of view cuts the body at
    its side, the mask's middle is one lung's: with ``cut_field_midline`` (canonical x,
    see :func:`~.sides.cut_field_midline`) and the CT (``hu``), such a component near that
    midline is airway too when it is dark, its median at most ``max_median_hu`` (the air of
    a lumen, not the other lung's aerated part).  Returns a new array.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    if not mask.any():
        return out
    _, sy, sx = (float(s) for s in spacing_zyx)
    midlines = [midline_x(mask)] + ([] if cut_field_midline is None or hu is None else [cut_field_midline])
    zs, ys, xs = bounding_box(mask, margin=0)
    # One 4-connected labelling per slice with its stats (area, box, centroid): no Python loop over components.
    for z in range(zs.start, zs.stop):
        plane = mask[z, ys, xs]
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(plane.view(np.uint8), connectivity=4)
        if n <= 1:
            continue
        area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        box = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64) * stats[:, cv2.CC_STAT_HEIGHT]
        compact = (area * sy * sx < max_area_mm2) & (area >= 0.5 * box)
        compact[0] = False  # background
        near = [np.abs((centroids[:, 0] + xs.start - m) * sx) <= max_offset_mm for m in midlines]
        airway = compact & near[0]
        if len(near) > 1:
            for k in np.flatnonzero(compact & near[1] & ~airway):
                airway[k] = np.median(hu[z, ys, xs][labels == k]) <= max_median_hu
        if airway.any():
            out[z, ys, xs][airway[labels]] = False
    return out


def postprocess(
    prob: np.ndarray,
    spacing_zyx,
    threshold: float = 0.5,
    hu: np.ndarray | None = None,
    body: np.ndarray | None = None,
) -> np.ndarray:
    """Canonical probability volume -> uint8 labels (0 background, 1 right, 2 left).

    ``hu``, the canonical CT itself, or its ``body`` mask lets the body rules of
    :func:`select_lungs` apply.
    """
    return postprocess_with_report(prob, spacing_zyx, threshold, hu, body)[0]


def postprocess_with_report(
    prob: np.ndarray,
    spacing_zyx,
    threshold: float = 0.5,
    hu: np.ndarray | None = None,
    body: np.ndarray | None = None,
) -> tuple[np.ndarray, SelectionReport]:
    """:func:`postprocess`, and the report of which components were removed and why.

    With ``hu``, the kept lungs are grown into the aerated voxels next to them
    (:func:`grow_into_aerated_lung`), and trachea cross-sections are removed again.
    """
    if body is None and hu is not None:
        body = body_mask(hu, spacing_zyx)
    candidates = prob > threshold
    # A field of view cut at the body's side: the trachea lies by the gap between the lungs in view, not
    # by the mask's middle (the middle of the one lung that fills the view).
    cut = None if body is None or hu is None else cut_field_midline(candidates, body, spacing_zyx)
    candidates = remove_central_airways(candidates, spacing_zyx, cut_field_midline=cut, hu=hu)
    kept, report = select_lungs(candidates, spacing_zyx, body, hu=hu)
    if hu is not None and kept.any():
        kept = grow_into_aerated_lung(kept, hu, body, spacing_zyx, exclude=candidates & ~kept)
        kept = remove_central_airways(kept, spacing_zyx, cut_field_midline=cut, hu=hu)
    del candidates
    labels = np.zeros(kept.shape, np.uint8)
    if not kept.any():
        return labels, report
    # The lungs' slices, whole: the sides' rules look at the body's edges and chest wall around the lungs.
    box = (bounding_box(kept, margin=1)[0], slice(None), slice(None))
    # Each side: drop stray islands (under 5 % of that side's largest part).
    labels[box], report.side_basis = split_sides(
        fill_holes_axial(kept[box]),
        island_fraction=0.05,
        body=None if body is None else body[box],
        spacing_zyx=spacing_zyx,
    )
    return labels, report
