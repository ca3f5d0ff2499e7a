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
from .masks import CROSS, bounding_box, fill_holes_axial
from .sides import cut_field_midlines, split_right_left, split_sides

__all__ = [
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "body_mask",
    "clean_lung_mask",
    "select_lungs",
    "grow_into_aerated_lung",
    "SelectionReport",
    "remove_central_airways",
    "add_partly_aerated_rim",
    "airway_lumen_below",
    "split_right_left",
    "split_sides",
    "postprocess",
    "postprocess_with_report",
]


#: The lungs' edge: the voxels next to the lungs below this (partly air) are lung (see :func:`postprocess`).
RIM_HU = -200.0
#: The air of an airway's lumen (see :func:`airway_lumen_below`).
LUMEN_HU = -950.0


def remove_central_airways(
    mask: np.ndarray,
    spacing_zyx,
    max_area_mm2: float = 600.0,
    max_offset_mm: float = 25.0,
    cut_field_midlines: tuple[float, ...] = (),
    hu: np.ndarray | None = None,
    max_median_hu: float = -950.0,
) -> np.ndarray:
    """Drop trachea and main-bronchus cross-sections: small, compact 2D components near the midline.

    On each axial slice, a component smaller than ``max_area_mm2`` whose centroid
    lies within ``max_offset_mm`` of the midline (the mean x of the whole lung
    mask) and that fills at least half of its bounding box is airway, not lung.
    Lung apices are lateral, so they are kept.  Where a field of view cuts the body at
    its side, the mask's middle is one lung's: with ``cut_field_midlines`` (canonical x, see
    :func:`~.sides.cut_field_midlines`) and the CT (``hu``), such a component near one of them
    is airway too in the upper half of the
    mask's height when it is dark, its median at most ``max_median_hu`` (the air of a lumen, not
    the other lung's aerated part).  From the top down, a compact component that continues the
    airway found on the slice above is airway too (see :func:`_continues_tube`).  Returns a new
    array.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    if not mask.any():
        return out
    _, sy, sx = (float(s) for s in spacing_zyx)
    midlines = [midline_x(mask), *(cut_field_midlines if hu is not None else ())]
    zs, ys, xs = bounding_box(mask, margin=0)
    upper = (zs.start + zs.stop) / 2  # the trachea runs in the upper half of the lungs' height
    above = None  # the airway found on the slice above
    # From the top down, one 4-connected labelling per slice with its stats (area, box, centroid).
    for z in range(zs.stop - 1, zs.start - 1, -1):
        plane = mask[z, ys, xs]
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(plane.view(np.uint8), connectivity=4)
        if n <= 1:
            above = None
            continue
        area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        box = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64) * stats[:, cv2.CC_STAT_HEIGHT]
        compact = (area * sy * sx < max_area_mm2) & (area >= 0.5 * box)
        compact[0] = False  # background
        near = [np.abs((centroids[:, 0] + xs.start - m) * sx) <= max_offset_mm for m in midlines]
        airway = compact & near[0]
        if len(near) > 1 and z >= upper:
            for k in np.flatnonzero(compact & np.any(near[1:], axis=0) & ~airway):
                airway[k] = np.median(hu[z, ys, xs][labels == k]) <= max_median_hu
        if above is not None:
            airway |= compact & _continues_tube(labels, n, area, above)
        if airway.any():
            out[z, ys, xs][airway[labels]] = False
            above = (np.where(airway, np.arange(n), 0)[labels], area)
        else:
            above = None
    return out


def _continues_tube(labels: np.ndarray, n: int, area: np.ndarray, above: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per 2D component of a slice (``labels``, ``area``): whether it continues an airway component found
    on the slice above (``above``: that slice's labels, 0 where not airway, and their areas): at least half
    of it under one such component, and no more than 1.5 times that one's area (the trachea is a tube; a
    lung that meets it at the field's edge is wider).  Followed down from where the rules find it plainly
    (by the midline, or dark in the upper chest), the trachea stays airway where a field of view cut off
    the midline."""
    above_labels, above_area = above
    both = (labels > 0) & (above_labels > 0)
    m = above_area.size
    pairs = np.bincount(labels[both] * m + above_labels[both], minlength=n * m).reshape(n, m)
    best = np.argmax(pairs, axis=1)
    overlap = pairs[np.arange(n), best]
    return (overlap >= 0.5 * area) & (area <= 1.5 * above_area[best])


def postprocess(
    prob: np.ndarray,
    spacing_zyx,
    threshold: float = 0.5,
    hu: np.ndarray | None = None,
    body: np.ndarray | None = None,
    rim_hu: float | None = RIM_HU,
) -> np.ndarray:
    """Canonical probability volume -> uint8 labels (0 background, 1 right, 2 left).

    ``hu``, the canonical CT itself, or its ``body`` mask lets the body rules of
    :func:`select_lungs` apply.  With ``hu``, the lungs are grown into the aerated
    lung next to them (below -400 HU, up to 10 mm) and then by one pixel in-plane
    into the pixels below ``rim_hu`` (the lung's edge, partly air: lung contours
    such as radiotherapy's take them; None leaves them out).
    """
    return postprocess_with_report(prob, spacing_zyx, threshold, hu, body, rim_hu)[0]


def postprocess_with_report(
    prob: np.ndarray,
    spacing_zyx,
    threshold: float = 0.5,
    hu: np.ndarray | None = None,
    body: np.ndarray | None = None,
    rim_hu: float | None = RIM_HU,
) -> tuple[np.ndarray, SelectionReport]:
    """:func:`postprocess`, and the report of which components were removed and why.

    With ``hu``, the kept lungs are grown into the aerated voxels next to them
    (:func:`grow_into_aerated_lung`), never into what the rules removed, and trachea
    cross-sections are removed again; once the sides are decided, each side takes its
    partly aerated edge (``rim_hu``, see :func:`add_partly_aerated_rim`).
    """
    if body is None and hu is not None:
        body = body_mask(hu, spacing_zyx)
    found = prob > threshold
    # A field of view cut at the body's side: the trachea lies by the gap between the lungs in view, or on
    # the border of a half field, not by the mask's middle (the middle of the one lung that fills the view).
    cuts = () if body is None or hu is None else cut_field_midlines(found, body, spacing_zyx)
    candidates = remove_central_airways(found, spacing_zyx, cut_field_midlines=cuts, hu=hu)
    kept, report = select_lungs(candidates, spacing_zyx, body, hu=hu)
    removed = found & ~kept
    airway = found & ~candidates
    del candidates, found
    if hu is not None and kept.any():
        lumen = airway_lumen_below(airway, hu, body)
        kept &= ~lumen
        removed |= lumen
        airway |= lumen
        del lumen
        if airway.any():  # for the QC: airway, not missed lung
            airway_box = bounding_box(airway, margin=0)
            report.airway = (airway_box, airway[airway_box].copy())
    del airway
    if hu is not None and kept.any():
        # never into what the network found and the rules removed: gas, and the airways' lumen
        kept = grow_into_aerated_lung(kept, hu, body, spacing_zyx, exclude=removed)
        kept = remove_central_airways(kept, spacing_zyx, cut_field_midlines=cuts, hu=hu)
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
    if hu is not None and rim_hu is not None:
        # after the sides are decided: the rim may close the gap between two lungs, never their sides
        add_partly_aerated_rim(labels, hu, body, rim_hu, exclude=removed)
    return labels, report


def airway_lumen_below(
    airway: np.ndarray, hu: np.ndarray, body: np.ndarray, lumen_hu: float = LUMEN_HU, edge_hu: float = -400.0
) -> np.ndarray:
    """The air of the airways' lumen followed down from the ``airway`` the rules removed (canonical arrays,
    ``hu`` the CT and ``body`` its body mask).  On each slice, from the top down, a 2D region of lumen air
    (below ``lumen_hu``, inside the body) is lumen when at least half of it lies under the airway or lumen
    of the slice above, or it touches that slice's airway, and it is no more than 1.5 times as large as
    they are: the trachea and bronchi are tubes; a region that widens is not theirs.  The network may call
    the lumen lung where it meets a lung the field of view cut beside the trachea; the lungs must not grow
    into it either.  The lumen's edge comes with it: the pixels below ``edge_hu`` (partly air, darker than
    the wall) next to it.  Returns a new bool array."""
    import cv2

    out = np.zeros(airway.shape, bool)
    if not airway.any():
        return out
    above = np.zeros(airway.shape[1:], bool)
    for z in range(int(np.flatnonzero(airway.any(axis=(1, 2)))[-1]), -1, -1):
        here = cv2.dilate(airway[z].view(np.uint8), CROSS) > 0
        air = (np.asarray(hu[z]) < lumen_hu) & body[z] if above.any() or here.any() else None
        if air is None or not air.any():
            above = airway[z]
            continue
        n, regions, stats, _ = cv2.connectedComponentsWithStats(air.view(np.uint8), connectivity=4)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        under = np.bincount(regions[above], minlength=n)[:n]
        touch = np.bincount(regions[here], minlength=n)[:n] > 0
        tube = (under >= 0.5 * area) | touch
        tube &= area <= 1.5 * (np.count_nonzero(above) + np.count_nonzero(airway[z]))
        tube[0] = False
        out[z] = tube[regions]
        above = airway[z] | out[z]
        out[z] |= (cv2.dilate(out[z].view(np.uint8), CROSS) > 0) & (np.asarray(hu[z]) < edge_hu)
    return out


def add_partly_aerated_rim(
    labels: np.ndarray, hu: np.ndarray, body: np.ndarray, rim_hu: float = RIM_HU, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Each side of canonical ``labels`` (1 right, 2 left) grown in place by one pixel in-plane (4-connected)
    into the unlabelled pixels below ``rim_hu`` inside the ``body`` and not in ``exclude``: the lung's edge,
    partly air.  A pixel that both sides reach stays unlabelled.  Returns ``labels``."""
    import cv2

    if not labels.any():
        return labels
    box = bounding_box(labels > 0, margin=1)
    sub = labels[box]
    free = (sub == 0) & (np.asarray(hu[box]) < rim_hu) & body[box]
    if exclude is not None:
        free &= ~exclude[box]
    for z in range(sub.shape[0]):
        if not free[z].any():
            continue
        reach = [cv2.dilate((sub[z] == side).view(np.uint8), CROSS) > 0 for side in (RIGHT_LUNG, LEFT_LUNG)]
        right, left = reach[0] & ~reach[1] & free[z], reach[1] & ~reach[0] & free[z]
        sub[z][right], sub[z][left] = RIGHT_LUNG, LEFT_LUNG
    return labels
